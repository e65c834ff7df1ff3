"""Labelled examples to train on: a ``text,label`` CSV, or images in one folder per label.

The same readers serve ``bulkscore train`` (a file or folder on disk), the API (an uploaded
CSV, or a zip of one folder per label) and the worker (which re-reads the stored upload).
A malformed file, a single label or too few examples of a label is a
:class:`TrainingDataError` whose message says what to fix; an image file that is not an
image is only skipped (counted and named in the model's evaluation), as scoring jobs treat
it as one item's error.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath

from core.config import Settings
from core.inputs.items import InputItem, checked_text_item, unstorable
from core.inputs.text_files import InputFileError
from core.models.registry import InputKind

# Fewer than this many examples of a label leaves too little to learn from and nothing to
# evaluate on once the hold-out takes its share.
MIN_EXAMPLES_PER_LABEL = 5
MAX_LABELS = 1000
MAX_LABEL_CHARS = 256  # results.label is String(256)
IGNORED_ZIP_FOLDERS = ("__MACOSX",)
READABLE_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
INFLATE_PIECE_BYTES = 64 * 1024


class TrainingDataError(ValueError):
    """The labelled data cannot be trained on; the message says what to fix."""


class DataFormat(StrEnum):
    """How labelled data arrives."""

    CSV = "csv"  # text,label (an id column is optional; other columns are ignored)
    ZIP = "zip"  # one folder per label, images inside (API uploads)
    FOLDER = "folder"  # the same on disk (``bulkscore train --data photos/``)


@dataclass(slots=True)
class LabelledExamples:
    """Inputs and their labels, in order. An item with ``error`` set is skipped."""

    items: list[InputItem] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def add(self, item: InputItem, label: str) -> None:
        self.items.append(item)
        self.labels.append(label)

    @property
    def usable(self) -> list[int]:
        """Positions of the items that can be trained on."""
        return [i for i, item in enumerate(self.items) if item.error is None]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(item id, reason)`` of every item left out."""
        return [(item.item_id, item.error) for item in self.items if item.error is not None]

    def label_counts(self) -> Counter[str]:
        """Usable examples per label."""
        return Counter(self.labels[i] for i in self.usable)

    def without(self, positions: set[int], reasons: dict[int, str]) -> LabelledExamples:
        """A copy where the items at ``positions`` are skipped with ``reasons[position]``."""
        items = [
            InputItem(item_id=item.item_id, error=reasons.get(i, "skipped"))
            if i in positions
            else item
            for i, item in enumerate(self.items)
        ]
        return LabelledExamples(items, list(self.labels))


def check_label(label: object, where: str) -> str:
    """A label as stored: stripped, non-empty, at most :data:`MAX_LABEL_CHARS` characters."""
    text = str(label or "").strip()
    if not text:
        raise TrainingDataError(f"{where}: empty label")
    if len(text) > MAX_LABEL_CHARS:
        raise TrainingDataError(f"{where}: label longer than {MAX_LABEL_CHARS} characters")
    problem = unstorable(text)
    if problem is not None:
        raise TrainingDataError(f"{where}: the label {problem}")
    return text


def check_examples(
    examples: LabelledExamples, min_per_label: int = MIN_EXAMPLES_PER_LABEL
) -> Counter[str]:
    """The usable examples per label, if there are enough to train and evaluate on.

    Raises:
        TrainingDataError: No usable example, a single label, more than :data:`MAX_LABELS`
            labels, or a label with fewer than ``min_per_label`` usable examples.
    """
    counts = examples.label_counts()
    if not counts:
        raise TrainingDataError("no usable examples to train on")
    if len(counts) == 1:
        (only,) = counts
        raise TrainingDataError(
            f"only one label ({only!r}): a classifier needs examples of at least two labels"
        )
    if len(counts) > MAX_LABELS:
        raise TrainingDataError(f"{len(counts)} labels; at most {MAX_LABELS} are supported")
    short = sorted((label, n) for label, n in counts.items() if n < min_per_label)
    if short:
        listed = ", ".join(f"{label!r} has {n}" for label, n in short)
        raise TrainingDataError(
            f"too few examples: {listed}; each label needs at least {min_per_label} "
            "(some are held out to evaluate the model)"
        )
    return counts


def parse_labelled_csv(raw: bytes, max_chars: int, name: str = "data") -> LabelledExamples:
    """A ``text,label`` CSV (UTF-8; an ``id`` column is optional, others are ignored)."""
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TrainingDataError(f"{name}: not valid UTF-8 (byte {exc.start})") from exc
    reader = csv.DictReader(io.StringIO(content, newline=""))
    fields = reader.fieldnames or []
    if "text" not in fields or "label" not in fields:
        raise TrainingDataError(
            f'{name}: the CSV header must have "text" and "label" columns (found: '
            f"{', '.join(fields) or 'no header'})"
        )
    examples = LabelledExamples()
    try:
        for number, row in enumerate(reader, start=1):
            where = f"{name}: row {number}"
            label = check_label(row.get("label"), where)
            item = checked_text_item(row.get("id") or number, row.get("text") or "", max_chars)
            if item.error is not None:
                raise TrainingDataError(f"{where}: {item.error}")
            examples.add(item, label)
    except csv.Error as exc:
        raise TrainingDataError(f"{name}: CSV error near row {reader.line_num}: {exc}") from exc
    return examples


def read_labelled_folder(folder: Path, max_image_bytes: int) -> LabelledExamples:
    """Images in one sub-folder per label (``photos/cat/1.jpg``): the folder names the label."""
    # Deferred: Pillow and numpy, for image inputs only.
    from core.inputs.images import read_image_inputs

    if not folder.is_dir():
        raise TrainingDataError(f"{folder}: not a folder (expected one sub-folder per label)")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    loose = [p.name for p in entries if not p.is_dir()]
    if loose:
        raise TrainingDataError(
            f"{folder}: {', '.join(loose[:3])} not in a label folder; put each image in the "
            "sub-folder named after its label"
        )
    if not entries:
        raise TrainingDataError(f"{folder}: no label folders (expected one sub-folder per label)")
    examples = LabelledExamples()
    for sub in entries:
        label = check_label(sub.name, f"{folder}/{sub.name}")
        try:
            items = read_image_inputs(str(sub), max_image_bytes)
        except InputFileError as exc:
            raise TrainingDataError(str(exc)) from exc
        for item in items:
            item.item_id = f"{sub.name}/{item.item_id}"[:256]
            examples.add(item, label)
    return examples


def parse_labelled_zip(
    raw: bytes, max_image_bytes: int, max_files: int, max_total_bytes: int
) -> LabelledExamples:
    """A zip of one folder per label (optionally all inside one top folder).

    Nothing is extracted to disk, and the sizes the zip declares are never trusted: each
    member is inflated a piece at a time under a running count, so a member past
    ``max_image_bytes`` stops being read at the limit (that image is skipped), and the
    archive is refused once all it has inflated passes ``max_total_bytes``. A zip bomb
    costs at most the limits, whatever its directory says.
    """
    # Imported here: the API imports this module, and must not load Pillow for a CSV.
    # Deferred: Pillow and numpy, for image inputs only.
    from core.inputs.images import checked_image_item

    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, ValueError) as exc:  # ValueError: a name not valid UTF-8
        raise TrainingDataError(f"data is not a valid zip file ({exc})") from exc
    with archive:
        members = _label_members(archive, max_files)
        budget = _InflateBudget(max_total_bytes)
        examples = LabelledExamples()
        for info, label, ident in members:
            data = _inflate(archive, info, max_image_bytes, budget)
            if data is None:
                error = f"image is over the limit of {max_image_bytes} bytes"
                examples.add(InputItem(item_id=ident, error=error), label)
            else:
                examples.add(checked_image_item(ident, data, max_image_bytes), label)
    return examples


def _label_members(
    archive: zipfile.ZipFile, max_files: int
) -> list[tuple[zipfile.ZipInfo, str, str]]:
    """``(member, label, id)`` of every file, checked for layout before any is inflated."""
    members = [
        info
        for info in archive.infolist()
        if not info.is_dir() and not _ignored(PurePosixPath(info.filename))
    ]
    if not members:
        raise TrainingDataError("the zip holds no files (expected one folder per label)")
    if len(members) > max_files:
        raise TrainingDataError(f"the zip holds {len(members)} files; the limit is {max_files}")
    paths = [PurePosixPath(info.filename).parts for info in members]
    tops = {parts[0] for parts in paths}
    # A zipped folder ("photos/cat/1.jpg") holds its label folders one level down.
    strip = 1 if len(tops) == 1 and all(len(parts) >= 3 for parts in paths) else 0
    checked = []
    for info, parts in sorted(zip(members, paths, strict=True), key=lambda p: p[1]):
        inner = parts[strip:]
        if len(inner) != 2:
            raise TrainingDataError(
                f"{info.filename}: expected <label>/<image> (one folder per label)"
            )
        if info.compress_type not in READABLE_COMPRESSION:
            # bzip2 and LZMA members are inflated by zipfile without an output bound.
            raise TrainingDataError(
                f"{info.filename}: compressed with method {info.compress_type}; zip the "
                "images with deflate (the usual) or store them"
            )
        checked.append((info, check_label(inner[0], info.filename), "/".join(inner)))
    return checked


@dataclass(slots=True)
class _InflateBudget:
    """Bytes the whole archive may still inflate to."""

    limit: int
    used: int = 0

    def spend(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise TrainingDataError(
                f"the zip unpacks to more than {self.limit} bytes; that is the limit"
            )


def _inflate(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int, budget: _InflateBudget
) -> bytes | None:
    """The member's bytes, or None once they pass ``max_bytes`` (left unread from there)."""
    pieces: list[bytes] = []
    size = 0
    try:
        with archive.open(info) as member:
            # Bounded reads: zipfile inflates at most about one piece per call (the
            # deflate decompressor is given an output limit), whatever the header claims.
            while piece := member.read(INFLATE_PIECE_BYTES):
                size += len(piece)
                budget.spend(len(piece))
                if size > max_bytes:
                    return None
                pieces.append(piece)
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, ValueError) as exc:
        # A CRC or size that disagrees with the content, an encrypted member, an
        # unsupported method, a truncated stream.
        raise TrainingDataError(f"{info.filename}: cannot be read ({exc})") from exc
    return b"".join(pieces)


def _ignored(path: PurePosixPath) -> bool:
    return any(part.startswith(".") or part in IGNORED_ZIP_FOLDERS for part in path.parts)


@dataclass(frozen=True, slots=True)
class DataLimits:
    """The limits labelled data is read under (from the settings)."""

    max_text_chars: int
    max_image_bytes: int
    max_files: int
    max_total_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DataLimits:
        return cls(
            max_text_chars=settings.max_text_chars,
            max_image_bytes=settings.max_image_bytes,
            max_files=settings.max_items_per_job,
            # Photos barely compress, so an archive that unpacks to many times the largest
            # upload is a zip bomb, not a data set.
            max_total_bytes=4 * settings.max_body_bytes,
        )


def parse_upload(
    raw: bytes, data_format: DataFormat, limits: DataLimits, name: str = "data"
) -> LabelledExamples:
    """Labelled examples from an upload's bytes (CSV or zip)."""
    if data_format == DataFormat.CSV:
        return parse_labelled_csv(raw, limits.max_text_chars, name)
    if data_format == DataFormat.ZIP:
        return parse_labelled_zip(
            raw, limits.max_image_bytes, limits.max_files, limits.max_total_bytes
        )
    raise TrainingDataError(f"{name}: cannot read {data_format.value!r} data from an upload")


def upload_format(filename: str, kind: InputKind) -> DataFormat:
    """The format of an uploaded file for a base of input kind ``kind`` (by its name)."""
    suffix = PurePosixPath(filename).suffix.lower()
    if kind == InputKind.TEXT:
        if suffix != ".csv":
            raise TrainingDataError(
                f"upload a .csv file with text,label columns for a text base, not {filename!r}"
            )
        return DataFormat.CSV
    if suffix != ".zip":
        raise TrainingDataError(
            f"upload a .zip of one folder per label for an image base, not {filename!r}"
        )
    return DataFormat.ZIP


def read_local_data(path: Path, kind: InputKind, limits: DataLimits) -> LabelledExamples:
    """Labelled examples from disk: a CSV file (texts) or a folder per label (images)."""
    if kind == InputKind.TEXT:
        if path.suffix.lower() != ".csv":
            raise TrainingDataError(f"{path}: give a .csv file with text,label columns")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TrainingDataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        return parse_labelled_csv(raw, limits.max_text_chars, str(path))
    if path.is_file() and path.suffix.lower() == ".zip":
        return parse_upload(path.read_bytes(), DataFormat.ZIP, limits, str(path))
    return read_labelled_folder(path, limits.max_image_bytes)
