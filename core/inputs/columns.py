"""Which columns of a table-like input file (.csv, .jsonl, .parquet) hold what.

``text``/``id`` name the columns read as an item's text and id; ``keep`` names input
columns carried, as strings, into the item's ``metadata`` and from there into every export
(SageMaker's ``JoinSource``, Vertex's passthrough columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.inputs.items import (
    ITEM_METADATA_MAX_KEY_CHARS,
    ITEM_METADATA_MAX_KEYS,
    ITEM_METADATA_MAX_VALUE_CHARS,
    unstorable,
)


class ColumnChoiceError(ValueError):
    """The columns asked for cannot be used (too many kept columns, a name reused)."""


@dataclass(frozen=True, slots=True)
class InputColumns:
    text: str = "text"
    id: str = "id"
    keep: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.text or not self.id:
            raise ColumnChoiceError("the text and id column names may not be empty")
        if len(self.keep) > ITEM_METADATA_MAX_KEYS:
            raise ColumnChoiceError(
                f"at most {ITEM_METADATA_MAX_KEYS} columns can be kept, not {len(self.keep)}"
            )
        if len(set(self.keep)) != len(self.keep) or any(not name for name in self.keep):
            raise ColumnChoiceError("the kept columns must be distinct, non-empty names")
        long = [name for name in self.keep if len(name) > ITEM_METADATA_MAX_KEY_CHARS]
        if long:
            raise ColumnChoiceError(
                f"a kept column's name is at most {ITEM_METADATA_MAX_KEY_CHARS} characters "
                f"(it becomes a metadata key): {long[0][:80]!r}"
            )

    @classmethod
    def parse(cls, text: str | None, id_: str | None, keep: str | None) -> InputColumns:
        """From option values: ``keep`` is a comma-separated list (``"a,b"``)."""
        kept = tuple(name.strip() for name in keep.split(",")) if keep else ()
        return cls(text or "text", id_ or "id", kept)

    @property
    def needed(self) -> tuple[str, ...]:
        """The columns that must exist (the id column is optional: row numbers stand in)."""
        return (self.text, *self.keep)


DEFAULT_COLUMNS = InputColumns()


def kept_values(
    columns: InputColumns, row: dict[str, object]
) -> tuple[dict[str, str] | None, str | None]:
    """The item's metadata from ``row``'s kept columns, and why it is unusable (or None).

    Values are stored as text (``str(value)``); a missing/null value is left out, and a row
    with none is given no metadata (None).
    """
    if not columns.keep:
        return None, None
    metadata: dict[str, str] = {}
    for name in columns.keep:
        value = row.get(name)
        if value is None:
            continue
        text = value if isinstance(value, str) else str(value)
        if len(text) > ITEM_METADATA_MAX_VALUE_CHARS:
            return None, (
                f"column {name!r} is {len(text)} characters; the limit for a kept column is "
                f"{ITEM_METADATA_MAX_VALUE_CHARS}"
            )
        problem = unstorable(text)
        if problem is not None:
            return None, f"column {name!r} {problem}"
        metadata[name] = text
    # No kept cell with a value: no metadata, as for an input without kept columns.
    return metadata or None, None


def missing_columns_message(name: str, wanted: tuple[str, ...], present: list[str]) -> str | None:
    """The error for columns of ``wanted`` not in ``present`` (None when all are there)."""
    missing = [column for column in wanted if column not in present]
    if not missing:
        return None
    listed = ", ".join(repr(column) for column in present) or "(none)"
    return (
        f"{name}: no column {', '.join(repr(column) for column in missing)}; "
        f"the columns are {listed}"
    )
