"""Help output without a ``<bool>`` placeholder after on/off flags.

Typer 0.29 prints each option's value type in the help (``--model <str>``); for a flag such
as ``--wait`` or ``--help``, which takes no value, that reads ``--wait <bool>`` and suggests
that a value must follow. Flags show no type; every other option keeps its own. Older Typer
(0.27, which openapi-python-client in the dev extra asks for) prints no types at all and
has nothing to patch.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_typed = getattr(TyperOption, "display_type_rich", None)


def _flags_show_no_type(self: TyperOption, ctx: Any) -> str | None:
    # ctx: the click context Typer passes (Typer vendors its own click).
    assert _typed is not None
    return None if self.is_flag else _typed(self, ctx)


def hide_flag_types() -> None:
    """Apply the rule above to every command's help (idempotent)."""
    if _typed is not None:
        TyperOption.display_type_rich = _flags_show_no_type  # type: ignore[attr-defined, method-assign, unused-ignore]
