"""Small JPEG thumbnails of stored image inputs, for the web job page.

A thumbnail is made through the same safe decoder (and limits) as scoring: an input the
decoder refuses gets no thumbnail, never a decoder run outside those limits.
"""

from __future__ import annotations

import io

from PIL import Image

from core.inputs.image_decode import ImageDecodeError, decode_image

THUMBNAIL_EDGE = 160  # pixels, the shorter side
JPEG_QUALITY = 80


def thumbnail_jpeg(data: bytes, edge: int = THUMBNAIL_EDGE) -> bytes | None:
    """A JPEG of ``data`` with its shorter side at most ``edge``; None if undecodable."""
    try:
        pixels = decode_image(data, edge, fit="shorter_side")
    except ImageDecodeError:
        return None
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
