"""Forge adapters: one module per forge behind the protocol in ``base``."""
