"""Real photos for the ``imagenet-lite`` tests: scikit-image's samples, what they show, variants.

scikit-image ships its sample photos inside the package (no download). Each photo here has
the ImageNet labels that a correct ImageNet classifier must give it; ``variants`` writes a
photo as a user's files would come: resized, rotated with an EXIF orientation tag that the
decoder must undo, and saved as JPEG, PNG or WebP. ``augmented`` makes the random crops,
flips and colour changes of the transfer-learning tests.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance
from skimage import data

# ImageNet's domestic cats: which of them a tabby is called is a coin toss between
# tiger_cat, Egyptian_cat and tabby (they swap places with a re-encoding), a cat it is.
DOMESTIC_CATS = frozenset({"tabby", "tiger_cat", "Persian_cat", "Siamese_cat", "Egyptian_cat"})


@dataclass(frozen=True)
class SamplePhoto:
    """A scikit-image photo and the top-1 ImageNet labels that are right for it."""

    name: str
    top1: frozenset[str]

    def image(self) -> Image.Image:
        return sample_image(self.name)


def sample_image(name: str) -> Image.Image:
    """scikit-image's sample ``name`` as an RGB image (grey ones converted)."""
    # motorcycle_left: the left view of the stereo pair.
    pixels = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
    return Image.fromarray(pixels).convert("RGB")


PHOTOS = (
    SamplePhoto("chelsea", DOMESTIC_CATS),
    SamplePhoto("coffee", frozenset({"espresso"})),
    SamplePhoto("rocket", frozenset({"missile"})),
    SamplePhoto("camera", frozenset({"tripod"})),  # the cameraman's tripod fills the frame
    SamplePhoto("motorcycle_left", frozenset({"moped"})),
)


def encode(image: Image.Image, fmt: str, orientation: int | None = None, **params: object) -> bytes:
    buffer = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def variants(image: Image.Image) -> dict[str, bytes]:
    """``suffix -> bytes``: the photo as PNG, resized, and stored sideways with EXIF tags.

    The stored pixels of an EXIF variant are turned the other way; a decoder that ignores
    the tag shows the model a sideways photo.
    """
    width, height = image.size
    return {
        "png": encode(image, "PNG"),
        "small.jpg": encode(image.resize((width * 3 // 4, height * 3 // 4)), "JPEG", quality=90),
        "large.webp": encode(image.resize((width * 3 // 2, height * 3 // 2)), "WEBP", quality=85),
        # Orientation 6: the viewer turns the stored pixels 90 degrees clockwise.
        "exif6.jpg": encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", 6, quality=90),
        # Orientation 8: 90 degrees counter-clockwise.
        "exif8.webp": encode(image.transpose(Image.Transpose.ROTATE_270), "WEBP", 8, quality=90),
        "exif3.png": encode(image.transpose(Image.Transpose.ROTATE_180), "PNG", 3),
    }


def augmented(image: Image.Image, rng: np.random.Generator) -> bytes:
    """A random crop (35-90% of the area), maybe mirrored, colour-jittered, as a JPEG."""
    width, height = image.size
    side = np.sqrt(rng.uniform(0.35, 0.9))
    crop_w, crop_h = int(width * side), int(height * side)
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    out = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.6, 1.4))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.6, 1.4))
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.5, 1.5))
    tint = rng.uniform(0.85, 1.15, 3)  # a colour cast per channel
    pixels = np.clip(np.asarray(out, np.float32) * tint, 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=int(rng.integers(70, 95)))
