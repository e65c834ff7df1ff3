"""Images and tiny image models built locally for tests (nothing is downloaded).

``catalogue()`` is the set of bad and awkward images every image path must survive, each
with the outcome it must have.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth gradient with noise: compresses like a photo, differs per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [127 + 100 * np.sin(x / (7 + c + seed) + y / (11 + c)) for c in range(3)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` (8-bit grey) with one tiny IDAT.

    A decompression bomb's shape: huge dimensions in a few dozen bytes. Decoding it would
    allocate width x height bytes; a safe decoder refuses it from the header.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg() -> bytes:
    """A 64x32 (wide) JPEG, left half red, right half blue, tagged "rotate 90 CW" (6)."""
    image = Image.new("RGB", (64, 32), BLUE)
    image.paste(RED, (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer turns it 90 degrees clockwise
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in (RED, (0, 255, 0), BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def palette_png_with_transparency() -> bytes:
    """Left half transparent (palette index 0), right half blue (index 1)."""
    image = Image.new("P", (40, 20), 0)
    image.putpalette([0, 0, 0, *BLUE] + [0] * (256 - 2) * 3)
    image.paste(1, (20, 0, 40, 20))
    return encode(image, "PNG", transparency=0)


def sixteen_bit_png(level: int = 128 * 257) -> bytes:
    """A 16-bit grey PNG at ``level`` (of 65535): 128 in 8 bits, not clipped to 255."""
    array = np.full((20, 30), level, dtype=np.uint16)
    image = Image.fromarray(array)  # uint16 gives mode I;16
    assert image.mode == "I;16"
    return encode(image, "PNG")


def rgba_png() -> bytes:
    """Left half fully transparent black, right half opaque red."""
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    image.paste((*RED, 255), (20, 0, 40, 20))
    return encode(image, "PNG")


@dataclass(frozen=True)
class Case:
    """An image and what decoding it must give: an error containing ``error``, or a check."""

    name: str
    data: bytes
    error: str | None = None
    check: Callable[[np.ndarray], bool] | None = None


def _mean(array: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in array.reshape(-1, 3).mean(axis=0))


def _close(actual: tuple[float, ...], expected: tuple[int, ...], tolerance: float = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def catalogue() -> list[Case]:
    """Bad and awkward images, each with its expected outcome (decoded at 224, exact)."""
    good_jpeg = encode(photo(320, 240), "JPEG", quality=90)
    cmyk = encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", quality=95)
    return [
        Case("zero-byte.jpg", b"", error="empty file"),
        Case("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], error="truncated"),
        Case("text.jpg", b"this is a text file, not a photo\n" * 4, error="not a supported image"),
        Case("document.pdf", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", error="not a supported image"),
        Case("bad-png.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, error="PNG"),
        Case("over-limit.png", png_header_only(8000, 6000), error="the limit is 40000000"),
        Case("bomb.png", png_header_only(100_000, 100_000), error="decompression bomb"),
        Case("good.jpg", good_jpeg, check=lambda a: a.shape == (224, 224, 3)),
        Case("jpeg-named.png", good_jpeg, check=lambda a: a.shape == (224, 224, 3)),
        Case("animated.gif", animated_gif(), check=lambda a: _close(_mean(a), RED)),
        Case("cmyk.jpg", cmyk, check=lambda a: _close(_mean(a), RED, 30)),
        Case("sixteen-bit.png", sixteen_bit_png(), check=lambda a: _close(_mean(a), (128,) * 3, 1)),
        Case(
            "palette-transparent.png",
            palette_png_with_transparency(),
            check=lambda a: _close(_mean(a[:, :100]), WHITE) and _close(_mean(a[:, 124:]), BLUE),
        ),
        Case(
            "rgba.png",
            rgba_png(),
            check=lambda a: _close(_mean(a[:, :100]), WHITE) and _close(_mean(a[:, 124:]), RED),
        ),
        Case(
            "exif-rotated.jpg",
            exif_rotated_jpeg(),
            # Turned upright: the red (left) half is now on top.
            check=lambda a: _close(_mean(a[:100]), RED, 30) and _close(_mean(a[124:]), BLUE, 30),
        ),
        Case("grey.jpg", encode(photo().convert("L"), "JPEG"), check=lambda a: a.shape[2] == 3),
        Case(
            "la.png",
            encode(Image.new("LA", (10, 10), (0, 0)), "PNG"),
            check=lambda a: _close(_mean(a), WHITE, 1),
        ),
        Case("photo.webp", encode(photo(), "WEBP"), check=lambda a: a.shape == (224, 224, 3)),
        Case("photo.bmp", encode(photo(), "BMP"), check=lambda a: a.shape == (224, 224, 3)),
        Case("photo.tiff", encode(photo(), "TIFF"), check=lambda a: a.shape == (224, 224, 3)),
    ]


def build_tiny_keras_model(
    path: Path, classes: int = 1000, input_size: int = 64, softmax: bool = True, seed: int = 0
) -> Path:
    """A few conv layers with ResNet50's input contract (RGB, caffe preprocessing), saved."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None)(x)
    keras.Model(inputs, outputs).save(path)
    return path


def build_tiny_hf_classifier(
    folder: Path, labels: tuple[str, ...] = ("cat", "dog", "fish")
) -> Path:
    """A random tiny ``ResNetForImageClassification`` with a ResNet-50-style processor."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    # num_labels, id2label and label2id are PretrainedConfig keywords the stubs do not list.
    config = ResNetConfig(  # type: ignore[call-arg]
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    ResNetForImageClassification(config).eval().save_pretrained(folder, safe_serialization=True)
    # microsoft/resnet-50's preprocessing: shorter side to 224 / 0.875, centre crop 224.
    ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(folder)
    return folder
