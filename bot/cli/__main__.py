"""``python -m bot.cli``: the same as the ``reviewbot`` command."""

from bot.cli import main

main()
