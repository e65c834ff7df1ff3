"""Image inputs: folders, globs, single files, and the upload checks the API calls."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from image_support import encode, photo

from core.inputs.images import checked_base64_image_item, checked_image_item, read_image_inputs
from core.inputs.text_files import InputFileError

JPEG = encode(photo(), "JPEG")
PNG = encode(photo(seed=1), "PNG")


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.jpg").write_bytes(JPEG)
    (folder / "a.png").write_bytes(PNG)
    (folder / "notes.jpg").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "sub" / "c.jpg").write_bytes(JPEG)
    return folder


def test_a_folder_is_read_flat_sorted_with_per_item_errors(photos: Path) -> None:
    items = read_image_inputs(str(photos))
    assert [item.item_id for item in items] == ["a.png", "b.jpg", "empty.png", "notes.jpg"]
    by_id = {item.item_id: item for item in items}
    assert by_id["a.png"].data == PNG and by_id["a.png"].error is None
    assert by_id["b.jpg"].data == JPEG
    assert "not a supported image" in (by_id["notes.jpg"].error or "")
    assert by_id["notes.jpg"].data is None
    assert "empty" in (by_id["empty.png"].error or "")


def test_a_recursive_glob_gives_ids_relative_to_its_folder(photos: Path) -> None:
    items = read_image_inputs(str(photos / "**" / "*.jpg"))
    assert [item.item_id for item in items] == ["b.jpg", "notes.jpg", "sub/c.jpg"]
    flat = read_image_inputs(str(photos / "*.png"))
    assert [item.item_id for item in flat] == ["a.png", "empty.png"]


def test_a_single_file(photos: Path) -> None:
    [item] = read_image_inputs(str(photos / "b.jpg"))
    assert item.item_id == "b.jpg" and item.data == JPEG


@pytest.mark.parametrize("source", ["missing-folder", "missing/*.jpg"])
def test_nothing_to_read_is_a_usage_error(tmp_path: Path, source: str) -> None:
    with pytest.raises(InputFileError):
        read_image_inputs(str(tmp_path / source))


def test_an_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "only-a-sub-folder").mkdir()
    with pytest.raises(InputFileError, match="no files"):
        read_image_inputs(str(tmp_path))


def test_files_over_the_byte_limit_are_refused_unread(photos: Path) -> None:
    items = {item.item_id: item for item in read_image_inputs(str(photos), max_bytes=len(PNG) - 1)}
    assert "limit" in (items["a.png"].error or "") and items["a.png"].data is None
    assert items["b.jpg"].error is None  # the JPEG is smaller than the PNG


def test_checked_image_item_goes_by_content_not_name() -> None:
    assert checked_image_item("x.txt", JPEG, max_bytes=10**6).error is None
    refused = checked_image_item("x.jpg", b"GIF? no: plain text", max_bytes=10**6)
    assert refused.data is None and "not a supported image" in (refused.error or "")
    assert "limit" in (checked_image_item("x.jpg", JPEG, max_bytes=10).error or "")
    long_id = checked_image_item("i" * 1000, JPEG, max_bytes=10**6)
    assert (long_id.item_id, long_id.data) == ("i" * 256, None)
    assert long_id.error == "id is 1000 characters; the limit is 256"
    assert checked_image_item("n\x00.png", JPEG).error == "id contains a NUL character"


def test_checked_image_item_reads_the_byte_limit_from_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.config import reset_settings_cache

    monkeypatch.setenv("BULKSCORE_MAX_IMAGE_BYTES", "100")
    reset_settings_cache()
    try:
        assert "limit is 100" in (checked_image_item("a", JPEG).error or "")
    finally:
        monkeypatch.delenv("BULKSCORE_MAX_IMAGE_BYTES")
        reset_settings_cache()


def test_base64_items() -> None:
    ok = checked_base64_image_item("a", base64.b64encode(PNG).decode(), max_bytes=10**6)
    assert ok.data == PNG and ok.error is None
    assert "base64" in (checked_base64_image_item("b", "%%%", max_bytes=10**6).error or "")
    assert "string" in (checked_base64_image_item("c", 42, max_bytes=10**6).error or "")
    huge = base64.b64encode(b"\xff\xd8\xff" + b"0" * 3000).decode()
    assert "limit" in (checked_base64_image_item("d", huge, max_bytes=1000).error or "")


def test_list_image_files_names_the_files_without_reading_them(photos: Path) -> None:
    from core.inputs.images import list_image_files

    listed = list_image_files(str(photos))
    assert [ident for ident, _ in listed] == ["a.png", "b.jpg", "empty.png", "notes.jpg"]
    assert all(path.parent == photos for _, path in listed)
    assert [ident for ident, _ in list_image_files(str(photos / "**" / "c.jpg"))] == ["sub/c.jpg"]
