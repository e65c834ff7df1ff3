"""One input of a job, and the checks every id and text pass before they are stored."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ID_CHARS = 256  # items.item_id and results.item_id are String(256)
# An item's metadata (kept input columns, or a JSON input's ``metadata``): as small and
# bounded as a job's (api.schemas), since it is stored with every item and exported.
ITEM_METADATA_MAX_KEYS = 16
ITEM_METADATA_MAX_KEY_CHARS = 64
ITEM_METADATA_MAX_VALUE_CHARS = 512
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(slots=True)
class InputItem:
    """An input as the caller gave it. ``error`` marks an input refused at intake."""

    item_id: str
    text: str | None = None
    data: bytes | None = None
    error: str | None = None
    # Strings carried into every export (kept input columns, a JSON input's ``metadata``).
    metadata: dict[str, str] | None = None


def unstorable(value: str) -> str | None:
    """Why ``value`` cannot be stored as SQL text (the end of a sentence), or None.

    PostgreSQL ``text`` rejects NUL bytes (SQLite would keep them, so a job would behave
    differently by database) and a lone surrogate cannot be encoded at all. Every string
    that reaches the database from outside (ids, texts, labels) passes this check first.
    """
    if "\x00" in value:
        return "contains a NUL character"
    # An ASCII string (CPython knows without a scan) holds no surrogate: the search cost
    # 36 ms per 20,000 texts of every submission.
    if not value.isascii() and _UNSTORABLE.search(value) is not None:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def checked_id(item_id: object) -> tuple[str, str | None]:
    """The id to store for the caller's ``item_id``, and why it is unusable (or None).

    Any value is turned into text (a JSON reader refuses the types JSON ids may not have
    before this); the text must be at most :data:`MAX_ID_CHARS` characters and storable
    (:func:`unstorable`). Cutting a long id would make two items share an id, so an
    unusable id is never repaired: it makes its item a per-item error, stored under a
    readable form of the id (cut, NUL and lone surrogates shown as U+FFFD) so that the
    result row still says which item it was.
    """
    try:
        ident = item_id if isinstance(item_id, str) else str(item_id)
    except ValueError:  # an integer past int_max_str_digits (4,300 digits)
        return "(a huge integer)", f"id is an integer of over {MAX_ID_CHARS} digits"
    problem = None
    if len(ident) > MAX_ID_CHARS:
        problem = f"id is {len(ident)} characters; the limit is {MAX_ID_CHARS}"
        ident = ident[:MAX_ID_CHARS]
    unusable = unstorable(ident)
    if unusable is not None:
        problem = problem or f"id {unusable}"
        ident = _UNSTORABLE.sub("\ufffd", ident)
    return ident, problem


def text_problem(text: object, max_chars: int) -> str | None:
    """Why ``text`` cannot be scored, or None if it can.

    NUL bytes and lone surrogates are refused here (:func:`unstorable`), before anything
    is written, as per-item errors.
    """
    if not isinstance(text, str):
        return "text must be a string"
    if not text.strip():
        return "empty text"
    if len(text) > max_chars:
        return f"text is {len(text)} characters; the limit is {max_chars}"
    problem = unstorable(text)
    return None if problem is None else f"text {problem}"


def checked_text_item(item_id: object, text: object, max_chars: int) -> InputItem:
    """An :class:`InputItem` for ``text``, carrying a per-item error if the id or the text
    is unusable."""
    ident, problem = checked_id(item_id)
    problem = problem or text_problem(text, max_chars)
    if problem is not None:
        return InputItem(item_id=ident, error=problem)
    return InputItem(item_id=ident, text=text)  # type: ignore[arg-type]
