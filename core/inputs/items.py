"""One input of a job, and the checks every text passes before it is stored."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class InputItem:
    """An input as the caller gave it. ``error`` marks an input refused at intake."""

    item_id: str
    text: str | None = None
    data: bytes | None = None
    error: str | None = None


def text_problem(text: object, max_chars: int) -> str | None:
    """Why ``text`` cannot be scored, or None if it can.

    PostgreSQL ``text`` rejects NUL bytes and lone surrogates cannot be encoded at all, so
    both are refused here, before anything is written, as per-item errors.
    """
    if not isinstance(text, str):
        return "text must be a string"
    if not text.strip():
        return "empty text"
    if len(text) > max_chars:
        return f"text is {len(text)} characters; the limit is {max_chars}"
    if "\x00" in text:
        return "text contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text contains a lone surrogate (not valid Unicode)"
    return None


def checked_text_item(item_id: object, text: object, max_chars: int) -> InputItem:
    """An :class:`InputItem` for ``text``, carrying a per-item error if it is unusable."""
    ident = str(item_id)[:256]
    problem = text_problem(text, max_chars)
    if problem is not None:
        return InputItem(item_id=ident, error=problem)
    return InputItem(item_id=ident, text=text)  # type: ignore[arg-type]
