"""Data and tiny backbones for the training tests (generated here, never downloaded).

Two visually distinct kinds of image (stripes and dots, in random colours, sizes and
phases), a tiny Keras feature extractor with ResNet50's input contract, and helpers that
write labelled data as the CLI and the API take it.
"""

from __future__ import annotations

import csv
import io
import struct
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from image_support import encode
from models import write_models_file
from PIL import Image, ImageDraw


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    background = tuple(int(v) for v in rng.integers(150, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 100, 3))
    return background, ink


def stripes(rng: np.random.Generator, size: int = 48) -> Image.Image:
    """Parallel bars, horizontal or vertical, of a random period and phase."""
    background, ink = _colours(rng)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    period = int(rng.integers(6, 12))
    width = int(rng.integers(2, period // 2 + 1))
    start = int(rng.integers(0, period))
    vertical = bool(rng.integers(0, 2))
    for offset in range(start - period, size, period):
        box = (offset, 0, offset + width, size) if vertical else (0, offset, size, offset + width)
        draw.rectangle(box, fill=ink)
    return image


def dots(rng: np.random.Generator, size: int = 48) -> Image.Image:
    """Round dots scattered at random."""
    background, ink = _colours(rng)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 16))):
        radius = int(rng.integers(2, 5))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)
    return image


def stripes_and_dots(per_kind: int, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """``(label, file name, PNG bytes)``: ``per_kind`` images of each kind, interleaved."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(per_kind):
        for label, draw in (("stripes", stripes), ("dots", dots)):
            examples.append((label, f"{label}-{i:03d}.png", encode(draw(rng), "PNG")))
    return examples


def write_label_folders(root: Path, examples: Iterable[tuple[str, str, bytes]]) -> Path:
    """``root/<label>/<file>`` for each example (what ``bulkscore train --data`` reads)."""
    for label, name, data in examples:
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / name).write_bytes(data)
    return root


def zip_label_folders(examples: Iterable[tuple[str, str, bytes]], top: str = "photos") -> bytes:
    """A zip of ``top/<label>/<file>`` (what ``POST /v1/models`` takes for images)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, name, data in examples:
            archive.writestr(f"{top}/{label}/{name}", data)
    return buffer.getvalue()


def feature_base_models(path: Path, encoder: Path, base: str = "tinybase") -> Path:
    """A models file whose one model, ``base``, is the tiny text encoder as a backbone."""
    entry = {
        "task": "feature-extraction",
        "backend": "transformers",
        "source": str(encoder),
        "max_batch_size": 8,
    }
    return write_models_file(path, {base: entry})


def labelled_csv(path: Path, rows: Sequence[tuple[str, str]]) -> Path:
    """A ``text,label`` CSV file."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def intent_rows(per_label: int = 8) -> list[tuple[str, str]]:
    """Short support messages of three intents (distinct words, so even a tiny random
    encoder separates them)."""
    words = {
        "complaint": ["broken", "refund", "terrible", "angry", "late", "damaged", "worst"],
        "praise": ["love", "great", "wonderful", "thanks", "perfect", "happy", "excellent"],
        "question": ["how", "when", "where", "can", "which", "what", "does"],
    }
    rows = []
    for label, vocabulary in words.items():
        n = len(vocabulary)
        for i in range(per_label):
            picked = [vocabulary[(i + step * (1 + i // n)) % n] for step in range(3)]
            rows.append((" ".join(picked), label))
    return rows


def build_tiny_keras_backbone(path: Path, input_size: int = 48, seed: int = 0) -> Path:
    """Two random conv layers, globally max-pooled: a ``feature-extraction`` Keras model.

    Random filters already respond differently to bars and to dots; max-pooling keeps the
    strongest response of each (measured: the head separates the kinds on fresh images).
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Conv2D(32, 5, activation="relu")(inputs)
    x = keras.layers.Conv2D(64, 3, strides=2, activation="relu")(x)
    outputs = keras.layers.GlobalMaxPooling2D()(x)
    keras.Model(inputs, outputs).save(path)
    return path


class WordBackbone:
    """A fake text backbone: word counts over a fixed vocabulary (what ``embed`` gives)."""

    name = "words"
    revision = None
    max_batch_size = 4

    def __init__(self, rows: Sequence[tuple[str, str]]) -> None:
        self.vocabulary = sorted({word for text, _ in rows for word in text.split()})
        self.calls = 0

    def setup(self, device: str = "cpu") -> None:
        pass

    def embed(self, texts: Sequence[str], progress: Any = None) -> np.ndarray:
        self.calls += 1
        rows = np.zeros((len(texts), len(self.vocabulary)), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.split():
                if word in self.vocabulary:
                    rows[i, self.vocabulary.index(word)] += 1
        if progress is not None:
            progress(len(texts))
        return rows


def lying_zip(members: dict[str, int], declared: int) -> bytes:
    """A zip bomb: each member holds ``size`` zero bytes, deflated (about 1000:1), while its
    local header and its central directory entry both declare ``declared`` bytes."""
    buffer = io.BytesIO()
    piece = bytes(1 << 20)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, size in members.items():
            with archive.open(name, "w") as member:
                for start in range(0, size, len(piece)):
                    member.write(piece[: size - start])
    raw = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        infos, entry = archive.infolist(), archive.start_dir
    size_field = declared.to_bytes(4, "little")
    for info in infos:
        raw[info.header_offset + 22 : info.header_offset + 26] = size_field  # local header
        raw[entry + 24 : entry + 28] = size_field  # central directory entry
        name, extra, comment = struct.unpack("<HHH", raw[entry + 28 : entry + 34])
        entry += 46 + name + extra + comment
    return bytes(raw)
