"""The ``files``, ``jsonl`` and ``csv`` sources: files matching a glob, new or changed.

A file is new to a run when its path has no committed row, or its size or modification
time differ from that row (``schedule_files``). A changed file is read again whole: its
inputs are scored again, in a new job, under the same ids.

- ``files`` with a text model: ``.txt``, ``.jsonl`` and ``.csv`` files, by suffix.
- ``files`` with an image model: every matching file is one image.
- ``jsonl`` / ``csv``: every matching file is parsed as that format, whatever its suffix.

A file that cannot be read or parsed becomes one per-item error (and counts as seen), so a
malformed file is reported in the job's results instead of failing every night.
"""

from __future__ import annotations

import glob
from pathlib import Path

from core.config import Settings
from core.inputs.items import InputItem
from core.inputs.text_files import InputFileError, parse_text_bytes, read_text_file
from core.models.registry import InputKind
from core.schedules.config import Schedule, SourceKind
from core.schedules.sources.base import SourceError, Window, scrub

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
    schedule: Schedule, known: dict[str, FileState], settings: Settings
) -> Window:
    """The inputs of the files that are new or changed since the committed state.

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
    new = sorted(path for path, state in current.items() if known.get(path) != state)
    items: list[InputItem] = []
    for path in new:
        items.extend(_read(schedule, Path(path), _relative(Path(path), base), settings))
    return Window(
        items=items,
        start=None,
        end=[[path, *current[path]] for path in new],
    )


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _read(schedule: Schedule, path: Path, name: str, settings: Settings) -> list[InputItem]:
    if schedule.spec.input_kind == InputKind.IMAGE:
        return [_read_image(path, name, settings.max_image_bytes)]
    try:
        if schedule.source == SourceKind.FILES:
            inputs = read_text_file(path, settings.max_text_chars)
        else:
            suffix = "." + schedule.source.value
            inputs = parse_text_bytes(path.read_bytes(), suffix, settings.max_text_chars, name)
    except InputFileError as exc:
        return [InputItem(item_id=name[:MAX_ID_CHARS], error=str(exc))]
    except OSError as exc:
        return [InputItem(item_id=name[:MAX_ID_CHARS], error=f"{name}: cannot be read ({exc})")]
    # Ids say which file an input came from: "reviews/2024-05-01.jsonl:17".
    for item in inputs:
        item.item_id = f"{name}:{item.item_id}"[:MAX_ID_CHARS]
    return inputs


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
