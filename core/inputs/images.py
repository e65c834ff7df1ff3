"""Image inputs: files from a folder, a glob or one path, and the checks every upload passes.

Only cheap checks happen here (size in bytes, the content's signature); decoding waits for
the runner, where it overlaps with the model. A file that fails a check is still an item,
carrying a per-item error, so a job reports every input it was given.
"""

from __future__ import annotations

import base64
import binascii
import glob
from pathlib import Path

from core.config import get_settings
from core.inputs.image_decode import image_problem
from core.inputs.items import InputItem, checked_id
from core.inputs.text_files import InputFileError


def checked_image_item(item_id: object, data: bytes, max_bytes: int | None = None) -> InputItem:
    """An :class:`InputItem` for uploaded image bytes, with a per-item error if unusable.

    The id is checked as :func:`core.inputs.items.checked_id` says; the content by its
    signature (magic number), never by a file name, and against ``max_bytes`` (default:
    the ``max_image_bytes`` setting).

    Args:
        item_id: The caller's id for the image (a file name, or the JSON ``id``).
        data: The image file's bytes.
        max_bytes: Largest accepted size; None reads the setting.

    Returns:
        The item, with ``data`` set, or with ``error`` set and no data.
    """
    limit = get_settings().max_image_bytes if max_bytes is None else max_bytes
    ident, problem = checked_id(item_id)
    problem = problem or image_problem(data, limit)
    if problem is not None:
        return InputItem(item_id=ident, error=problem)
    return InputItem(item_id=ident, data=data)


def checked_base64_image_item(
    item_id: object, encoded: object, max_bytes: int | None = None
) -> InputItem:
    """Like :func:`checked_image_item`, for a JSON ``image_base64`` string."""
    limit = get_settings().max_image_bytes if max_bytes is None else max_bytes
    ident, problem = checked_id(item_id)
    if problem is not None:
        return InputItem(item_id=ident, error=problem)
    if not isinstance(encoded, str):
        return InputItem(item_id=ident, error="image_base64 must be a string")
    if len(encoded) > (limit + 2) // 3 * 4 + 4:  # refuse before decoding a huge string
        return InputItem(item_id=ident, error=f"image is over the limit of {limit} bytes")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return InputItem(item_id=ident, error="image_base64 is not valid base64")
    return checked_image_item(ident, data, limit)


def read_image_inputs(source: str, max_bytes: int | None = None) -> list[InputItem]:
    """The images named by ``source``: a folder, a glob pattern, or one file.

    - A folder: its files, **not recursive** (sub-folders are ignored; use a glob such as
      ``photos/**/*.jpg`` to recurse). Hidden files (``.DS_Store``, ...) are skipped; every
      other file is an item, and one that is not an image becomes a per-item error (the
      content decides, not the extension).
    - A glob (``*``, ``?``, ``[...]``; ``**`` recurses): the matching files.
    - A file: that one image.

    Ids are the paths relative to the folder (or to the glob's fixed leading folder), with
    ``/`` separators, and items come sorted by id, so a re-run lists them in the same order.

    Raises:
        InputFileError: Nothing exists at ``source`` or the pattern matches no file.
    """
    limit = get_settings().max_image_bytes if max_bytes is None else max_bytes
    return [_read_one(ident, path, limit) for ident, path in list_image_files(source)]


def list_image_files(source: str) -> list[tuple[str, Path]]:
    """``(id, path)`` of every file ``source`` names, sorted by id; nothing is read.

    The same rules as :func:`read_image_inputs` (which reads these files): a folder is
    listed flat without hidden files, a glob may recurse with ``**``, a file is itself.

    Raises:
        InputFileError: Nothing exists at ``source`` or the pattern matches no file.
    """
    path = Path(source).expanduser()
    if glob.has_magic(source):
        base = _fixed_prefix(source)
        matches = [Path(p) for p in glob.glob(str(Path(source).expanduser()), recursive=True)]
        files = [(_relative_id(p, base), p) for p in matches if p.is_file()]
        if not files:
            raise InputFileError(f"{source}: no files match this pattern")
    elif path.is_dir():
        files = [
            (entry.name, entry)
            for entry in path.iterdir()
            if entry.is_file() and not entry.name.startswith(".")
        ]
        if not files:
            raise InputFileError(f"{source}: the folder has no files (sub-folders are not read)")
    elif path.is_file():
        files = [(path.name, path)]
    else:
        raise InputFileError(f"{source}: no such file or folder")
    return sorted(files, key=lambda pair: pair[0])


def _fixed_prefix(pattern: str) -> Path:
    """The leading folders of a glob pattern before its first wildcard."""
    parts = Path(pattern).expanduser().parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative_id(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _read_one(name: str, path: Path, limit: int) -> InputItem:
    # A file name that is not valid UTF-8 reaches Python as lone surrogates: checked like
    # any other id before the file is read.
    ident, problem = checked_id(name)
    if problem is not None:
        return InputItem(item_id=ident, error=problem)
    try:
        size = path.stat().st_size
        if size > limit:
            # Not read at all: the size alone decides.
            return InputItem(item_id=ident, error=f"image is {size} bytes; the limit is {limit}")
        data = path.read_bytes()
    except OSError as exc:
        return InputItem(item_id=ident, error=f"cannot read the file: {exc.strerror or exc}")
    return checked_image_item(ident, data, limit)
