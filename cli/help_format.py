"""Help output without a ``<bool>`` placeholder after on/off flags.

Typer 0.29 prints each option's value type in the help (``--model <str>``); for a flag such
as ``--wait`` or ``--help``, which takes no value, that reads ``--wait <bool>`` and suggests
that a value must follow. Flags show no type; every other option keeps its own.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_typed = TyperOption.display_type_rich


def _flags_show_no_type(self: TyperOption, ctx: Any) -> str | None:
    # ctx: the click context Typer passes (Typer vendors its own click).
    return None if self.is_flag else _typed(self, ctx)


def hide_flag_types() -> None:
    """Apply the rule above to every command's help (idempotent)."""
    TyperOption.display_type_rich = _flags_show_no_type  # type: ignore[method-assign]
