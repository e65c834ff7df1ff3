"""Settings errors as one line: the variable, what it accepts, and what it was given.

pydantic's own report is a multi-line block naming the field (``max_batch_size``), not the
variable the user set (``BULKSCORE_MAX_BATCH_SIZE``), and a traceback around it reads as a
crash. :func:`describe_errors` turns it into ``BULKSCORE_MAX_BATCH_SIZE: must be an integer
>= 1 (got 'abc')``, joined by ``; `` when several variables are wrong.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import annotated_types

if TYPE_CHECKING:
    # Only for type hints: the CLI imports SettingsError before it needs pydantic.
    from pydantic import ValidationError
    from pydantic.fields import FieldInfo


class SettingsError(ValueError):
    """Settings that cannot be used; the message is one line naming each variable."""


# Longest given value quoted back: a pasted secret or blob should not fill the terminal.
SHOWN_CHARS = 60

_BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def _kind(annotation: Any) -> str:
    """What values of ``annotation`` look like, in words ("an integer", "one of a, b")."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(value) for value in get_args(annotation))
    if origin is Union or origin is types.UnionType:
        kinds = [_kind(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " or ".join(kinds) + " (or empty)"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is Path:
        return "a path"
    return "a text"


def accepts(field: FieldInfo) -> str:
    """``must be an integer >= 1 and <= 1000``: what ``field`` accepts."""
    bounds = []
    for constraint in field.metadata:
        for kind, attribute, symbol in _BOUNDS:
            if isinstance(constraint, kind):
                bounds.append(f"{symbol} {getattr(constraint, attribute)}")
    return f"must be {_kind(field.annotation)}" + (" " + " and ".join(bounds) if bounds else "")


def _given(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS] + "...'"


def describe_errors(exc: ValidationError, fields: Mapping[str, FieldInfo], prefix: str) -> str:
    """One line for every error of ``exc``, each naming its ``prefix``-ed variable."""
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        location = error.get("loc") or ()
        name = str(location[0]) if location else ""
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        if name not in fields:
            # A check across fields (a model validator): its message names the fields.
            parts.append(message)
            continue
        variable = f"{prefix}{name.upper()}"
        if error.get("type") == "value_error":
            # A validator of this field explains itself ("unknown timezone ...").
            parts.append(f"{variable}: {message}")
        else:
            parts.append(f"{variable}: {accepts(fields[name])} (got {_given(error.get('input'))})")
    return "; ".join(parts) or str(exc).splitlines()[0]
