"""Safe image decoding: untrusted bytes in, a uint8 ``H x W x 3`` RGB array out.

Every runner that takes images decodes through :func:`decode_image`, so a photo gives the
same pixels whichever backend scores it. Pillow and numpy only (``core/`` imports no ML
library). The rules, and why:

- **Formats by content.** The bytes' signature (magic number) picks the format, never a file
  name, and only that one decoder is allowed (``Image.open(formats=[...])``): JPEG, PNG,
  WebP, GIF, BMP, TIFF. FITS/PDF/EPS/... decoders never see user bytes.
- **Pixel limit from the header, before ``load()``.** ``width x height`` over
  ``max_pixels`` is an error; nothing is decompressed first. So is an image over Pillow's
  own ``Image.MAX_IMAGE_PIXELS`` (where it only emits a ``DecompressionBombWarning``):
  checked explicitly rather than through a warnings filter, because filters are
  process-global, not thread-safe to change, and reset by pytest, ``-W`` and libraries.
- **Truncated files are errors.** ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off, and
  ``load()`` runs inside the per-item error boundary: every failure is an
  :class:`ImageDecodeError` with a plain message, which runners turn into a per-item error.
- **Orientation.** The EXIF orientation is applied (``ImageOps.exif_transpose``), as every
  photo viewer does.
- **Colour.** CMYK, YCbCr, grey, 1-bit and palette images become RGB; 16-bit images are
  scaled to 8 bits (not clipped); transparent pixels (RGBA, LA, palette or grey with a
  transparent colour) are **composited on white**, as a browser shows them on a page, so a
  transparent logo does not turn into a black square.
- **Animations.** The first frame only.
- **Size.** JPEGs are decoded with ``draft()`` at 1/2, 1/4 or 1/8 scale, never below the
  target (almost free: the DCT is skipped, not the pixels thrown away later). Then one
  **bilinear** resize, the same in every runner:
  ``fit="exact"`` gives exactly ``size x size`` (aspect ratio not kept), which is what
  Keras' ``image.load_img(path, target_size=(size, size), interpolation="bilinear")`` does;
  ``fit="shorter_side"`` only shrinks, keeping the aspect ratio, until the shorter side is
  ``size`` (for Hugging Face processors, which then resize and crop as the model expects).
  Bilinear rather than Keras' default nearest: Pillow's bilinear filter widens its support
  when it shrinks (antialiasing), so a 4000-pixel photo does not alias into noise; it costs
  little once ``draft()`` has done the bulk of the shrinking.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Signatures (magic numbers) of the allowed formats, and the one Pillow decoder each may use.
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)
DEFAULT_MAX_PIXELS = 40_000_000
BACKGROUND = (255, 255, 255)  # what transparent pixels become
Fit = Literal["exact", "shorter_side"]

# Off is Pillow's default; set it explicitly: a truncated upload must be an error, not an
# image with a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ValueError):
    """The bytes are not an image this service decodes; the message says why, for the user."""


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name the bytes' signature announces, or None if not an allowed one."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def image_problem(data: bytes, max_bytes: int | None = None) -> str | None:
    """Why ``data`` cannot be an image to score (cheap checks, no decoding), or None."""
    if not data:
        return "empty file (0 bytes)"
    if max_bytes is not None and len(data) > max_bytes:
        return f"image is {len(data)} bytes; the limit is {max_bytes}"
    if sniff_format(data) is None:
        return (
            "not a supported image (the content is not JPEG, PNG, WebP, GIF, BMP or TIFF, "
            "whatever the file name says)"
        )
    return None


def decode_image(
    data: bytes,
    size: int | None = 224,
    *,
    fit: Fit = "exact",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode untrusted image bytes into a uint8 ``H x W x 3`` RGB array.

    Args:
        data: The file's bytes.
        size: Target edge in pixels; None keeps the decoded size (no resize, no draft).
        fit: ``"exact"``: resize to ``size x size``; ``"shorter_side"``: shrink (never
            enlarge) keeping the aspect ratio until the shorter side is ``size``.
        max_pixels: Largest ``width x height`` accepted, read from the header.

    Returns:
        The image as a C-contiguous ``uint8`` array of shape ``(H, W, 3)``.

    Raises:
        ImageDecodeError: For anything that is not a decodable, allowed image within the
            limits (empty, unknown signature, too many pixels, truncated, corrupt).
    """
    problem = image_problem(data)
    expected = sniff_format(data)
    if problem is not None or expected is None:
        raise ImageDecodeError(problem or "not a supported image")
    try:
        with Image.open(io.BytesIO(data), formats=[expected]) as image:
            _check_pixels(image.size, max_pixels)
            if size is not None and image.format == "JPEG":
                # Both edges stay >= size: draft picks the largest reduction that allows it.
                image.draft("RGB", (size, size))
            image.load()
            return _to_array(_oriented(image), size, fit)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not a valid {expected} image (cannot read its header)") from exc
    except MemoryError as exc:
        raise ImageDecodeError("image too large to decode in memory") from exc
    except Exception as exc:  # any decoder failure is this item's error
        reason = str(exc) or type(exc).__name__
        raise ImageDecodeError(f"corrupt or truncated {expected} image: {reason}") from exc


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {pixels} pixels; the limit is {max_pixels} "
            "(raise BULKSCORE_MAX_IMAGE_PIXELS to allow it)"
        )
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and pixels > pillow_limit:
        # Where Pillow itself only warns (DecompressionBombWarning): an error here.
        raise ImageDecodeError(
            f"image refused as a decompression bomb: {width}x{height} = {pixels} pixels is "
            f"over Pillow's limit of {pillow_limit}"
        )


def _oriented(image: Image.Image) -> Image.Image:
    """``image`` turned upright per its EXIF orientation (first frame only)."""
    try:
        turned = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF is common on phone photos; keep the pixels
        return image
    return image if turned is None else turned


def _to_array(image: Image.Image, size: int | None, fit: Fit) -> np.ndarray:
    rgb = to_rgb(image)
    if size is not None:
        target = _target_size(rgb.size, size, fit)
        if target != rgb.size:
            rgb = rgb.resize(target, Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _target_size(current: tuple[int, int], size: int, fit: Fit) -> tuple[int, int]:
    if fit == "exact":
        return (size, size)
    width, height = current
    shorter = min(width, height)
    if shorter <= size:
        return current
    scale = size / shorter
    return (max(size, round(width * scale)), max(size, round(height * scale)))


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK converted."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(image)
    if mode == "P" or (mode in ("L", "RGB") and "transparency" in image.info):
        # A palette (or a grey/RGB image with one transparent colour): through RGBA, so the
        # transparent entries composite on white instead of showing their palette colour.
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images scaled to 0-255 (``convert("L")`` would clip them)."""
    values = np.asarray(image)
    if image.mode == "F":
        peak = float(values.max()) if values.size else 0.0
        scaled = values * 255.0 if peak <= 1.0 else values  # float images are 0-1 or 0-255
    elif image.mode.startswith("I;16") or (values.size and int(values.max()) > 255):
        scaled = values.astype(np.float32) / 257.0  # 65535 -> 255 exactly
    else:
        scaled = values
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
