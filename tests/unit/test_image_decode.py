"""Safe image decoding: the catalogue of bad and awkward images, limits, orientation, size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from image_support import (
    RED,
    Case,
    catalogue,
    encode,
    exif_rotated_jpeg,
    photo,
    png_header_only,
)
from PIL import Image, ImageFile
from PIL.JpegImagePlugin import JpegImageFile

from core.inputs.image_decode import ImageDecodeError, decode_image, image_problem, sniff_format

BOMB_WARNING = "PIL.Image.DecompressionBombWarning"


@pytest.mark.parametrize("case", catalogue(), ids=lambda case: case.name)
def test_catalogue_outcome(case: Case) -> None:
    if case.error is not None:
        with pytest.raises(ImageDecodeError, match=case.error):
            decode_image(case.data, 224)
        return
    array = decode_image(case.data, 224)
    assert array.dtype == np.uint8 and array.shape == (224, 224, 3)
    assert array.flags.c_contiguous
    assert case.check is not None and case.check(array), case.name


def test_the_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    # 48 MP claimed in ~80 bytes: refused at once, nothing is allocated for the pixels.
    bomb = png_header_only(8000, 6000)
    assert len(bomb) < 200
    with pytest.raises(ImageDecodeError, match="8000x6000"):
        decode_image(bomb, 224)
    with pytest.raises(ImageDecodeError, match="limit is 100"):
        decode_image(encode(photo(20, 10), "PNG"), 224, max_pixels=100)
    assert decode_image(encode(photo(10, 10), "PNG"), 224, max_pixels=100).shape == (224, 224, 3)


@pytest.mark.parametrize(
    "filters",
    [
        pytest.param("ignore", marks=pytest.mark.filterwarnings(f"ignore::{BOMB_WARNING}")),
        pytest.param("error", marks=pytest.mark.filterwarnings(f"error::{BOMB_WARNING}")),
    ],
)
def test_pillows_decompression_bomb_warning_is_an_error(filters: str) -> None:
    # 100 MP: over Pillow's warning threshold (89.5 MP) but under our (raised) limit, so
    # only Pillow's DecompressionBombWarning stands between it and a 100 MB allocation. It
    # must be an error whatever the process's warning filters say.
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(png_header_only(10_000, 10_000), 224, max_pixels=10**9)


def test_truncated_images_stay_errors_even_if_pillow_is_told_otherwise() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    jpeg = encode(photo(320, 240), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(jpeg[:-500], 224)


def test_exif_orientation_is_applied() -> None:
    # Stored 64 wide x 32 high, tagged "rotate 90 clockwise": upright it is 32 x 64.
    upright = decode_image(exif_rotated_jpeg(), None)
    assert upright.shape == (64, 32, 3)
    assert tuple(upright[5, 16]) == pytest.approx(RED, abs=40)  # red (left) is now on top


def test_jpegs_are_drafted_near_the_target_size(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real_draft = JpegImageFile.draft

    def spy(self: JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        result = real_draft(self, mode, size)
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    decode_image(encode(photo(1920, 1440), "JPEG"), 224)
    # 1920x1440 is decoded at 1/4 scale (480x360), still >= 224 on both sides.
    assert calls == [((224, 224), (480, 360))]


def test_exact_fit_and_shorter_side_fit() -> None:
    wide = encode(photo(400, 200), "PNG")
    assert decode_image(wide, 100, fit="exact").shape == (100, 100, 3)
    assert decode_image(wide, 100, fit="shorter_side").shape == (100, 200, 3)
    # shorter_side never enlarges.
    assert decode_image(wide, 300, fit="shorter_side").shape == (200, 400, 3)
    assert decode_image(wide, None).shape == (200, 400, 3)


def test_the_resize_is_bilinear_like_keras_load_img() -> None:
    data = encode(photo(300, 200), "PNG")
    expected = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    )
    np.testing.assert_array_equal(decode_image(data, 224), expected)


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\xff\xd8\xff\xe0rest", "JPEG"),
        (b"\x89PNG\r\n\x1a\nrest", "PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"GIF89a...", "GIF"),
        (b"BM....", "BMP"),
        (b"II*\x00....", "TIFF"),
        (b"MM\x00*....", "TIFF"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"%PDF-1.7", None),
        (b"SIMPLE  =                    T", None),  # FITS
        (b"%!PS-Adobe-3.0 EPSF-3.0", None),
    ],
)
def test_format_comes_from_the_signature(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


def test_image_problem_checks_size_and_signature() -> None:
    jpeg = encode(photo(), "JPEG")
    assert image_problem(jpeg, max_bytes=len(jpeg)) is None
    assert "limit" in (image_problem(jpeg, max_bytes=len(jpeg) - 1) or "")
    assert "empty" in (image_problem(b"") or "")
    assert "not a supported image" in (image_problem(b"<html></html>") or "")


def test_a_signature_that_lies_is_an_error_not_a_crash() -> None:
    # A JPEG signature on PNG content: only the JPEG decoder may run, and it fails cleanly.
    fake = b"\xff\xd8\xff" + encode(photo(), "PNG")
    with pytest.raises(ImageDecodeError, match="JPEG"):
        decode_image(fake, 224)
