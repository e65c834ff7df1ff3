"""Small JPEG thumbnails of stored image inputs, for the web job page.

A thumbnail is made through the same safe decoder (and limits) as scoring: an input the
decoder refuses gets no thumbnail, never a decoder run outside those limits.
"""

from __future__ import annotations

import io

from PIL import Image

from core.inputs.image_decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

THUMBNAIL_EDGE = 160  # pixels, the shorter side
JPEG_QUALITY = 80


def thumbnail_jpeg(
    data: bytes, edge: int = THUMBNAIL_EDGE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes | None:
    """A JPEG of ``data`` with its shorter side at most ``edge``; None if undecodable.

    Args:
        max_pixels: The scoring limit (``Settings.max_image_pixels``): an image the workers
            would refuse is not decoded here either.
    """
    try:
        pixels = decode_image(data, edge, fit="shorter_side", max_pixels=max_pixels)
    except ImageDecodeError:
        return None
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
