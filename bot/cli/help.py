"""Help output that reads like a Unix tool's: ``--threshold SEVERITY``, ``PATH``, and nothing after a flag.

Typer 0.29 shows each parameter's Python type (``<bool>`` after every flag, ``<list[str]>``) and puts
required positionals in braces (``{path}``). These two overrides show the parameter's ``metavar``
instead — every option of this CLI sets one — nothing for flags, and positionals as click does.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption


def _option_type(self: TyperOption, ctx: Any) -> str | None:
    del ctx  # the metavar says it all
    if self.is_flag or self.count:
        return None
    return self.metavar or (self.name or "").upper() or None


def _argument_usage(self: TyperArgument) -> str:
    name = self.metavar or (self.name or "").upper()
    if self.nargs != 1:
        name += "..."
    return name if self.required else f"[{name}]"


def _argument_name(self: TyperArgument) -> str:
    return self.metavar or (self.name or "").upper()


def _no_type(self: TyperArgument, ctx: Any) -> None:
    del self, ctx  # a positional's metavar is its name


def install() -> None:
    TyperOption.display_type_rich = _option_type  # type: ignore[method-assign]
    TyperArgument._usage_display_name = _argument_usage  # type: ignore[method-assign]
    TyperArgument._rich_display_name = _argument_name  # type: ignore[method-assign]
    TyperArgument.display_type_rich = _no_type  # type: ignore[method-assign,assignment]
