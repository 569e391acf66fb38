"""The trainer: teacher exams, student answers, curriculum, LoRA fine-tuning, adapter registry.

May import ``bot`` (database models, LLM client, prompts); ``bot`` never imports this package.
"""
