"""The ``files``, ``jsonl``, ``csv`` and ``parquet`` sources: files matching a glob, new or
changed.

A file is new to a run when its path has no committed row, or its size or modification
time differ from that row (``schedule_files``). A text file that **grew** by appended
lines (its first ``size`` bytes are the ones scored, byte for byte, ending at a line
break) has only its new inputs scored: the row's SHA-256 and input count say which. Any
other change (a rewritten, truncated or edited file) reads the file again whole: its
inputs are scored again, in a new job, under the same ids; the result cache is what
keeps unchanged rows from costing a forward pass again.

- ``files`` with a text model: ``.txt``, ``.jsonl``, ``.csv`` and ``.parquet`` files, by
  suffix; the schedule's ``text_column``/``id_column``/``keep_columns`` name the columns.
- ``files`` with an image model: every matching file is one image.
- ``jsonl`` / ``csv`` / ``parquet``: every matching file is parsed as that format, whatever
  its suffix.

A Parquet file never "grows by lines" (it ends with its footer): any change reads it whole.

A file that cannot be read or parsed becomes one per-item error (and counts as seen), so a
malformed file is reported in the job's results instead of failing every night.
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from core.inputs.items import InputItem
from core.inputs.text_files import (
    TEXT_SUFFIXES,
    InputFileError,
    parse_text_bytes,
    read_text_file,
)
from core.models.registry import InputKind
from core.schedules.config import Schedule, SourceKind
from core.schedules.sources.base import KnownFile, SourceError, Window, scrub

MAX_ID_CHARS = 256

FileState = tuple[int, int]  # (size in bytes, mtime in nanoseconds)


def fixed_folder(pattern: str) -> Path:
    """The folder a glob pattern starts in: its leading parts before the first wildcard."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def list_files(pattern: str) -> dict[str, FileState]:
    """``path -> (size, mtime_ns)`` of every file matching ``pattern`` (recursive ``**``)."""
    found: dict[str, FileState] = {}
    for name in glob.glob(pattern, recursive=True):
        path = Path(name)
        try:
            stat = path.stat()
        except OSError:  # deleted between listing and stat: not there for this run
            continue
        if path.is_file():
            found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def read_files_window(
    schedule: Schedule, known: dict[str, KnownFile], settings: Settings
) -> Window:
    """The inputs of the files that are new or changed since the committed state (of a
    file that only grew, its new inputs only).

    Raises:
        SourceError: The glob's folder does not exist (a missing mount, a typo).
    """
    pattern = schedule.path or ""
    base = fixed_folder(pattern)
    if not base.is_dir():
        raise SourceError(
            scrub(
                f"schedule {schedule.name!r}: the folder {base} does not exist or is not a folder"
            )
        )
    current = list_files(pattern)
    # Stats are taken before reading: a file still being written when it is read looks
    # changed to the next run and is read again then.
    new = sorted(path for path, state in current.items() if _state(known.get(path)) != state)
    items: list[InputItem] = []
    end: list[list[object]] = []
    for path in new:
        read = _read(schedule, Path(path), _relative(Path(path), base), settings)
        items.extend(_new_rows(read, known.get(path)))
        if read.content is None:
            end.append([path, *current[path], None, None])
        else:
            digest = hashlib.sha256(read.content).hexdigest()
            end.append([path, len(read.content), current[path][1], digest, len(read.items)])
    return Window(items=items, start=None, end=end)


def _state(known: KnownFile | None) -> FileState | None:
    return None if known is None else (known.size, known.mtime_ns)


@dataclass(frozen=True, slots=True)
class FileRead:
    """A file's inputs, and the bytes they were parsed from (None: an image, or unread)."""

    items: list[InputItem]
    content: bytes | None = None


def _new_rows(read: FileRead, known: KnownFile | None) -> list[InputItem]:
    """The inputs of ``read`` not scored yet: those past the known rows of a file that only
    grew by whole lines since; every input of any other file."""
    if known is None or known.sha256 is None or known.rows is None or read.content is None:
        return read.items
    size = known.size
    grown = (
        0 < size < len(read.content)
        and read.content[size - 1 : size] == b"\n"
        and hashlib.sha256(read.content[:size]).hexdigest() == known.sha256
    )
    # The same bytes up to a line break parse to the same first inputs: skip those.
    return read.items[known.rows :] if grown else read.items


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _read(schedule: Schedule, path: Path, name: str, settings: Settings) -> FileRead:
    if schedule.spec.input_kind == InputKind.IMAGE:
        return FileRead([_read_image(path, name, settings.max_image_bytes)])
    try:
        if schedule.source == SourceKind.FILES:
            suffix = path.suffix.lower()
            if suffix not in TEXT_SUFFIXES:
                read_text_file(path, settings.max_text_chars)  # raises: says which types
            raw = _read_bytes(path)
            inputs = parse_text_bytes(
                raw, suffix, settings.max_text_chars, str(path), schedule.columns
            )
        else:
            raw = path.read_bytes()
            suffix = "." + schedule.source.value
            inputs = parse_text_bytes(raw, suffix, settings.max_text_chars, name, schedule.columns)
    except InputFileError as exc:
        return FileRead([InputItem(item_id=name[:MAX_ID_CHARS], error=str(exc))])
    except OSError as exc:
        error = f"{name}: cannot be read ({exc})"
        return FileRead([InputItem(item_id=name[:MAX_ID_CHARS], error=error)])
    # Ids say which file an input came from: "reviews/2024-05-01.jsonl:17".
    for item in inputs:
        item.item_id = f"{name}:{item.item_id}"[:MAX_ID_CHARS]
    return FileRead(inputs, raw)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, with ``read_text_file``'s messages for the usual failures."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise InputFileError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputFileError(f"{path}: is a folder, not a file") from exc
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror})") from exc


def _read_image(path: Path, name: str, max_bytes: int) -> InputItem:
    # Imported here: Pillow and numpy load only for schedules of image models.
    # Deferred: Pillow and numpy, for image inputs only.
    from core.inputs.images import checked_image_item

    ident = name[:MAX_ID_CHARS]
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return InputItem(
                item_id=ident, error=f"image is {size} bytes; the limit is {max_bytes}"
            )
        data = path.read_bytes()
    except OSError as exc:
        return InputItem(item_id=ident, error=f"cannot read the file: {exc.strerror or exc}")
    return checked_image_item(ident, data, max_bytes)
