from pathlib import Path

import pytest

from core.inputs.items import checked_id, checked_text_item, text_problem
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


@pytest.mark.parametrize(
    ("given", "stored", "problem"),
    [
        ("r1", "r1", None),
        (7, "7", None),
        (-5, "-5", None),
        ("i" * 256, "i" * 256, None),
        ("a\x00b", "a\ufffdb", "id contains a NUL character"),
        ("\ud800x\udfff", "\ufffdx\ufffd", "id contains a lone surrogate (not valid Unicode)"),
        ("i" * 257, "i" * 256, "id is 257 characters; the limit is 256"),
        # Too long is said first; the stored form is still storable.
        ("\x00" * 300, "\ufffd" * 256, "id is 300 characters; the limit is 256"),
        (10**300, "1" + "0" * 255, "id is 301 characters; the limit is 256"),
        # (A named case: pytest cannot name an integer past 4,300 digits.)
        pytest.param(
            10**5000,
            "(a huge integer)",
            "id is an integer of over 256 digits",
            id="a 5001-digit integer",
        ),
    ],
)
def test_ids_are_checked_as_text_and_an_unusable_one_is_its_items_error(
    given: object, stored: str, problem: str | None
) -> None:
    assert checked_id(given) == (stored, problem)
    item = checked_text_item(given, "a fine text", 100)
    assert (item.item_id, item.error, item.text is None) == (stored, problem, problem is not None)


def test_an_id_problem_comes_before_a_text_problem() -> None:
    assert checked_text_item("a\x00", "", 100).error == "id contains a NUL character"


def test_jsonl_ids_of_other_json_types_are_per_item_errors() -> None:
    ids = [b"true", b"1.5", b"[1]", b'{"a": 1}', b"null", b'"a\\u0000"']
    raw = b"".join(b'{"id": ' + ident + b', "text": "x"}\n' for ident in ids)
    items = parse_text_bytes(raw, ".jsonl", 100, "x")
    assert [(i.item_id, i.error) for i in items] == [
        ("1", "id must be a string or an integer"),
        ("2", "id must be a string or an integer"),
        ("3", "id must be a string or an integer"),
        ("4", "id must be a string or an integer"),
        ("5", None),  # null: the line number, as for a missing id
        ("a\ufffd", "id contains a NUL character"),
    ]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (
            b'{"id": ' + b"9" * 5000 + b', "text": "x"}',
            "line 2 holds an integer of over 4300 digits",
        ),
        (
            b'{"text": "' + b"x" * 10 + b'", "n": ' + b"[" * 100_000 + b"}",
            "line 2 is nested too deeply",
        ),
    ],
)
def test_a_jsonl_line_beyond_the_json_parser_is_a_file_error_naming_it(
    line: bytes, fragment: str
) -> None:
    with pytest.raises(InputFileError, match=fragment):
        parse_text_bytes(b'{"text": "ok"}\n' + line + b"\n", ".jsonl", 100, "x")


def test_csv_ids_with_nul_are_per_item_errors() -> None:
    items = parse_text_bytes(b"id,text\nok,x\nb\x00,y\n", ".csv", 100, "x")
    assert [(i.item_id, i.error) for i in items] == [
        ("ok", None),
        ("b\ufffd", "id contains a NUL character"),
    ]


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
