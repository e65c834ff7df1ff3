"""Schedule sources without a server: SQLite (read-only) and files on disk."""

from __future__ import annotations

import io
import os
import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.models.registry import Registry
from core.schedules.config import Schedule, parse_schedules
from core.schedules.sources import KnownFile, SourceError, read_window, scrub
from core.schedules.sources.files import fixed_folder
from core.schedules.sources.sql import decode_watermark, encode_watermark, read_only_url

MODELS = """
[models.tiny]
task = "text-classification"
backend = "transformers"
source = "/nowhere"

[models.photos]
task = "image-classification"
backend = "keras"
source = "keras:ResNet50/imagenet"
"""
SETTINGS = Settings(max_text_chars=100, max_image_bytes=10_000)


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    return Registry.load(path)


def schedule(registry: Registry, **entry: Any) -> Schedule:
    return parse_schedules({"s": {"cron": "0 2 * * *", "model": "tiny", **entry}}, registry)[0]


@pytest.mark.parametrize(
    "value",
    [
        datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime(2025, 1, 2, 3, 4, 5),
        date(2025, 1, 2),
        Decimal("12.50"),
        17,
        2.5,
        "2025-01-02 03:04:05",
        None,
    ],
)
def test_a_watermark_comes_back_with_its_type(value: Any) -> None:
    restored = decode_watermark(encode_watermark(value))
    assert restored == value and type(restored) is type(value)


def test_a_boolean_cannot_be_a_watermark() -> None:
    with pytest.raises(TypeError, match="true/false"):
        encode_watermark(True)


def test_sqlite_sources_are_opened_read_only() -> None:
    url = read_only_url("sqlite:////data/shop.db")
    assert url.database == "file:/data/shop.db"
    assert url.query == {"mode": "ro", "uri": "true"}
    with pytest.raises(ValueError, match="in-memory"):
        read_only_url("sqlite://")


def test_scrub_hides_passwords_in_any_form() -> None:
    url = "postgresql+psycopg://shop:s3cr%40t-pw@db:5432/shop"
    message = scrub(f"cannot connect to {url}: password s3cr@t-pw rejected", url)
    assert "s3cr" not in message
    assert "postgresql+psycopg://shop:***@db:5432/shop" in message


# --- sql on a SQLite file -------------------------------------------------------------------

QUERY = (
    "SELECT id, body AS text, updated_at FROM reviews "
    "WHERE :since IS NULL OR updated_at > :since ORDER BY id"
)


@pytest.fixture()
def shop(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE reviews (id INTEGER PRIMARY KEY, body TEXT, updated_at TEXT)")
        conn.executemany(
            "INSERT INTO reviews (body, updated_at) VALUES (?, ?)",
            [("great", "2025-01-01 10:00"), ("awful", "2025-01-03 10:00"), ("", "2025-01-02")],
        )
    conn.close()
    return path


def test_sql_window_reads_rows_after_the_watermark(registry: Registry, shop: Path) -> None:
    nightly = schedule(
        registry, source="sql", url=f"sqlite:///{shop}", query=QUERY, watermark="updated_at"
    )
    first = read_window(nightly, None, SETTINGS, {})
    assert [item.item_id for item in first.items] == ["1", "2", "3"]
    assert [item.text for item in first.items[:2]] == ["great", "awful"]
    assert first.items[2].error == "empty text"  # a per-item error, not a failed run
    assert (first.start, first.end) == (None, "2025-01-03 10:00")

    with sqlite3.connect(shop) as conn:
        conn.execute("UPDATE reviews SET updated_at = '2025-01-04' WHERE id = 1")
    conn.close()
    second = read_window(nightly, first.end, SETTINGS, {})
    assert [item.item_id for item in second.items] == ["1"]
    assert second.end == "2025-01-04"
    assert read_window(nightly, second.end, SETTINGS, {}).items == []


def test_the_users_query_cannot_write(registry: Registry, shop: Path) -> None:
    writer = schedule(
        registry,
        source="sql",
        url=f"sqlite:///{shop}",
        query="INSERT INTO reviews (body, updated_at) VALUES ('x', :since) "
        "RETURNING id, body AS text, updated_at",
        watermark="updated_at",
    )
    with pytest.raises(SourceError, match="the query failed: attempt to write a readonly database"):
        read_window(writer, "2030", SETTINGS, {})
    with sqlite3.connect(shop) as conn:
        assert conn.execute("SELECT count(*) FROM reviews").fetchone() == (3,)
    conn.close()


def test_missing_columns_and_files_are_clear_errors(registry: Registry, shop: Path) -> None:
    no_text = schedule(
        registry,
        source="sql",
        url=f"sqlite:///{shop}",
        query="SELECT id, body, updated_at FROM reviews WHERE :since IS NULL",
        watermark="updated_at",
    )
    with pytest.raises(SourceError, match=r"no column text \(they have id, body, updated_at\)"):
        read_window(no_text, None, SETTINGS, {})
    gone = shop.parent / "gone.db"
    missing = schedule(
        registry, source="sql", url=f"sqlite:///{gone}", query=QUERY, watermark="updated_at"
    )
    with pytest.raises(SourceError, match=r"cannot connect to sqlite:///.*gone\.db"):
        read_window(missing, None, SETTINGS, {})
    assert not gone.exists()  # read-only: a typo never creates an empty database


# --- files ----------------------------------------------------------------------------------


def test_fixed_folder_is_the_part_before_the_first_wildcard() -> None:
    assert fixed_folder("/data/in/*.jpg") == Path("/data/in")
    assert fixed_folder("/data/*/day/*.jsonl") == Path("/data")
    assert fixed_folder("/data/in/**/*.txt") == Path("/data/in")


def test_files_window_holds_only_new_or_changed_files(registry: Registry, tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "a.jsonl").write_text('{"id": "r1", "text": "good"}\n{"text": "bad"}\n')
    (inbox / "sub" / "b.txt").write_text("fine\n")
    drop = schedule(registry, source="files", path=str(inbox / "**" / "*.*"))
    first = read_window(drop, None, SETTINGS, {})
    assert [item.item_id for item in first.items] == ["a.jsonl:r1", "a.jsonl:2", "sub/b.txt:1"]
    known = {path: KnownFile(*state) for path, *state in first.end}
    assert set(known) == {str(inbox / "a.jsonl"), str(inbox / "sub" / "b.txt")}
    assert read_window(drop, None, SETTINGS, known).items == []

    (inbox / "c.csv").write_text("id,text\nx,nice\n")
    (inbox / "sub" / "b.txt").write_text("fine\nand more\n")  # grew: only its new line
    touched = inbox / "a.jsonl"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # changed: mtime only
    third = read_window(drop, None, SETTINGS, known)
    assert [item.item_id for item in third.items] == [
        "a.jsonl:r1",
        "a.jsonl:2",
        "c.csv:x",
        "sub/b.txt:2",
    ]


def committed(window: Any) -> dict[str, KnownFile]:
    """What commit_window stores for a run's window, as load_files reads it back."""
    return {path: KnownFile(*state) for path, *state in window.end}


@pytest.mark.parametrize(
    "name, head, tail, new_ids",
    [
        ("a.txt", "good\n\nbad\n", "fine\nawful\n", ["a.txt:4", "a.txt:5"]),
        (
            "a.jsonl",
            '{"id": "r1", "text": "good"}\n',
            '{"id": "r2", "text": "bad"}\n',
            ["a.jsonl:r2"],
        ),
        ("a.csv", "id,text\nx,good\n", "y,bad\nz,fine\n", ["a.csv:y", "a.csv:z"]),
    ],
)
def test_a_grown_file_has_only_its_new_rows_scored(
    registry: Registry, tmp_path: Path, name: str, head: str, tail: str, new_ids: list[str]
) -> None:
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / name
    path.write_text(head)
    drop = schedule(registry, source="files", path=str(tmp_path / "in" / "*.*"))
    first = read_window(drop, None, SETTINGS, {})
    known = committed(first)
    assert known[str(path)].rows == len(first.items) and known[str(path)].sha256
    with path.open("a") as handle:
        handle.write(tail)
    grown = read_window(drop, None, SETTINGS, known)
    assert [item.item_id for item in grown.items] == new_ids
    # The next run knows the whole grown file: nothing more to score.
    assert read_window(drop, None, SETTINGS, committed(grown)).items == []


def test_a_rewritten_or_unterminated_file_is_read_again_whole(
    registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "a.txt"
    drop = schedule(registry, source="files", path=str(tmp_path / "*.txt"))
    path.write_text("good\nbad\n")
    known = committed(read_window(drop, None, SETTINGS, {}))
    path.write_text("GOOD\nbad\nfine\n")  # grew, but its first bytes changed
    rewritten = read_window(drop, None, SETTINGS, known)
    assert [item.text for item in rewritten.items] == ["GOOD", "bad", "fine"]

    path.write_text("good\nbad")  # no line break at the end: the last line may go on
    known = committed(read_window(drop, None, SETTINGS, {}))
    path.write_text("good\nbad and worse\n")
    continued = read_window(drop, None, SETTINGS, known)
    assert [item.text for item in continued.items] == ["good", "bad and worse"]

    # A row committed before the content was recorded (no sha256): read whole, as before.
    path.write_text("one\n")
    old = {
        p: KnownFile(k.size, k.mtime_ns)
        for p, k in committed(read_window(drop, None, SETTINGS, {})).items()
    }
    path.write_text("one\ntwo\n")
    assert [item.text for item in read_window(drop, None, SETTINGS, old).items] == ["one", "two"]


def test_a_malformed_file_is_a_per_item_error(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "ok.ndjson").write_text('{"text": "fine"}\n')
    (tmp_path / "broken.ndjson").write_text('{"text": "fine"}\nnot json\n')
    drop = schedule(registry, source="jsonl", path=str(tmp_path / "*.ndjson"))
    window = read_window(drop, None, SETTINGS, {})
    assert [(item.item_id, item.text) for item in window.items] == [
        ("broken.ndjson", None),
        ("ok.ndjson:1", "fine"),
    ]
    assert "line 2 is not valid JSON" in (window.items[0].error or "")
    assert len(window.end) == 2  # both count as seen: a broken file is not read every night


def test_a_missing_folder_fails_the_run(registry: Registry, tmp_path: Path) -> None:
    drop = schedule(registry, source="files", path=str(tmp_path / "nope" / "*.txt"))
    with pytest.raises(SourceError, match=r"the folder .*nope does not exist"):
        read_window(drop, None, SETTINGS, {})
    # An existing folder with nothing in it is an empty window, not an error.
    empty = schedule(registry, source="files", path=str(tmp_path / "*.txt"))
    assert read_window(empty, None, SETTINGS, {}).items == []


def test_image_files_are_read_as_bytes(registry: Registry, tmp_path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    (tmp_path / "red.png").write_bytes(buffer.getvalue())
    (tmp_path / "huge.png").write_bytes(buffer.getvalue() + b"\0" * 20_000)
    (tmp_path / "notes.png").write_text("not an image")
    photos = schedule(registry, model="photos", source="files", path=str(tmp_path / "*.png"))
    items = {item.item_id: item for item in read_window(photos, None, SETTINGS, {}).items}
    assert items["red.png"].data == buffer.getvalue() and items["red.png"].error is None
    assert "the limit is 10000" in (items["huge.png"].error or "")
    assert items["notes.png"].data is None and items["notes.png"].error
