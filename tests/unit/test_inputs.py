from pathlib import Path

import pytest

from core.inputs.items import text_problem
from core.inputs.text_files import InputFileError, parse_text_bytes, read_text_file


def test_txt_skips_blank_lines_and_uses_line_numbers_as_ids(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("good film\n\n  \nbad film\n")
    items = read_text_file(path, 100)
    assert [(i.item_id, i.text) for i in items] == [("1", "good film"), ("4", "bad film")]


def test_jsonl_ids_default_to_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"text": "y"}\n{"id": 7, "text": "z"}\n')
    items = read_text_file(path, 100)
    assert [i.item_id for i in items] == ["a", "2", "7"]


def test_csv_with_and_without_ids(tmp_path: Path) -> None:
    with_ids = tmp_path / "a.csv"
    with_ids.write_text('id,text\nr1,"hello, world"\nr2,"multi\nline"\n')
    assert [(i.item_id, i.text) for i in read_text_file(with_ids, 100)] == [
        ("r1", "hello, world"),
        ("r2", "multi\nline"),
    ]
    without = tmp_path / "b.csv"
    without.write_text("text\nfirst\nsecond\n")
    assert [i.item_id for i in read_text_file(without, 100)] == ["1", "2"]


def test_bad_texts_become_per_item_errors_not_file_errors() -> None:
    raw = '{"text": ""}\n{"text": "   "}\n{"text": "a\\u0000b"}\n{"text": "ok"}\n{"text": 5}\n'
    items = parse_text_bytes(raw.encode(), ".jsonl", 100, "x")
    assert [i.error for i in items] == [
        "empty text",
        "empty text",
        "text contains a NUL character",
        None,
        "text must be a string",
    ]
    assert items[3].text == "ok"


def test_limits_and_surrogates() -> None:
    assert text_problem("x" * 11, 10) == "text is 11 characters; the limit is 10"
    assert "surrogate" in (text_problem("a\ud800b", 100) or "")


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("in.jsonl", '{"text": "a"}\n{not json}\n', "line 2 is not valid JSON"),
        ("in.jsonl", '["a"]\n', 'line 1 must be an object with a "text" field'),
        ("in.csv", "id,body\n1,x\n", 'must have a "text" column'),
        ("in.pdf", "x", "unsupported input file type"),
    ],
)
def test_malformed_files_say_where(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputFileError, match=fragment):
        read_text_file(path, 100)


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        read_text_file(tmp_path / "absent.txt", 100)
    path = tmp_path / "latin.txt"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(InputFileError, match="not valid UTF-8"):
        read_text_file(path, 100)
