"""PostgreSQL bulk writes through COPY keep the results table's promises."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, and_, delete, func, select

from core.db import get_engine
from core.inputs.items import InputItem
from core.jobs.column_pages import stream_column_pages
from core.jobs.export import export_lines
from core.jobs.lifecycle import Job, create_job, get_job, load_items
from core.jobs.parquet_export import parquet_pieces
from core.jobs.predictions import Prediction
from core.jobs.results import (
    ScoredItem,
    iter_results,
    write_job_results,
    write_results,
)
from core.jobs.status import JobStatus
from core.migrate import upgrade
from core.models.registry import ModelSpec
from core.tables import items, results

SPEC = ModelSpec(name="m", task="text-classification", backend="transformers", source="/x")
GOOD = Prediction(label="POSITIVE", score=0.75, top_k=[("POSITIVE", 0.75), ("NEGATIVE", 0.25)])


def pg_engine(url: str) -> Engine:
    upgrade(url)
    return get_engine(url)


def new_job(engine: Engine, count: int) -> Job:
    inputs = [InputItem(item_id=f"r{i}", text=f"text {i}") for i in range(count)]
    with engine.begin() as conn:
        return create_job(conn, SPEC, inputs, chunk_size=count)


def scored(indexes: range | list[int]) -> list[ScoredItem]:
    return [
        ScoredItem(i, f"r{i}", GOOD if i % 3 else Prediction.failure(f"bad\t{i}\\N"))
        for i in indexes
    ]


def job_of(engine: Engine, job_id: str) -> Job:
    with engine.connect() as conn:
        job = get_job(conn, job_id)
    assert job is not None
    return job


def count_rows(engine: Engine, job_id: str) -> int:
    with engine.connect() as conn:
        query = select(func.count()).select_from(results).where(results.c.job_id == job_id)
        return int(conn.scalar(query))


def test_rows_already_present_are_neither_written_nor_counted_twice(pg_url: str) -> None:
    engine = pg_engine(pg_url)
    job = new_job(engine, 10)
    with engine.begin() as conn:
        first = write_results(conn, job.id, "m", "rev1", scored(range(6)))
    assert (first.succeeded, first.failed) == (4, 2)
    with engine.begin() as conn:
        # Overlaps the first batch by three rows: only the four new ones count.
        second = write_results(conn, job.id, "m", "rev1", scored(range(3, 10)))
        again = write_results(conn, job.id, "m", "rev1", scored(range(10)))
    assert (second.written, again.written) == (4, 0)
    final = job_of(engine, job.id)
    assert (final.status, final.succeeded, final.failed) == (JobStatus.COMPLETED, 6, 4)
    assert count_rows(engine, job.id) == 10
    with engine.connect() as conn:
        rows = list(iter_results(conn, job.id))
    assert rows[1] == {
        "index": 1,
        "id": "r1",
        "label": "POSITIVE",
        "score": 0.75,
        "top_k": [["POSITIVE", 0.75], ["NEGATIVE", 0.25]],
        "error": None,
        "cached": False,
        "metadata": None,  # the input's metadata: none given
    }
    assert rows[0]["error"] == "bad\t0\\N" and rows[0]["top_k"] is None
    with engine.connect() as conn:
        for fmt in ("csv", "jsonl"):
            fast = "".join(export_lines(iter_results(conn, job.id, top_k_text=True), fmt))
            assert fast == "".join(export_lines(rows, fmt))


def test_a_rolled_back_write_leaves_nothing_behind(pg_url: str) -> None:
    engine = pg_engine(pg_url)
    job = new_job(engine, 4)
    try:
        with engine.begin() as conn:
            write_results(conn, job.id, "m", None, scored(range(4)))
            raise RuntimeError("crash before commit")
    except RuntimeError:
        pass
    assert count_rows(engine, job.id) == 0
    # The same pooled connection's staging table must not replay the rolled-back rows.
    with engine.begin() as conn:
        outcome = write_results(conn, job.id, "m", None, scored([0]))
    assert outcome.written == 1 and count_rows(engine, job.id) == 1


def test_one_write_for_several_jobs_keeps_each_jobs_counters(pg_url: str) -> None:
    engine = pg_engine(pg_url)
    small = [new_job(engine, 1) for _ in range(3)]
    big = new_job(engine, 5)
    batch: dict[str, Any] = {job.id: scored([0]) for job in small}
    batch[big.id] = scored(range(1, 3))
    with engine.begin() as conn:
        outcomes = write_job_results(conn, "m", None, batch)
    assert {job_id: o.written for job_id, o in outcomes.items()} == {
        **{job.id: 1 for job in small},
        big.id: 2,
    }
    for job in small:
        final = job_of(engine, job.id)
        # Index 0 is a per-item error in ``scored``.
        assert (final.status, final.succeeded, final.failed) == (JobStatus.COMPLETED, 0, 1)
    assert job_of(engine, big.id).status == JobStatus.QUEUED


def test_items_survive_copy_byte_for_byte(pg_url: str) -> None:
    engine = pg_engine(pg_url)
    blob = bytes(range(256)) + b"\\.\n\\N\t"
    inputs = [
        InputItem(item_id="tab\there\\N", text="line\nbreak \\. and \t tab"),
        InputItem(item_id="img", data=blob),
        InputItem(item_id="refused", error="empty text"),
    ]
    with engine.begin() as conn:
        job = create_job(conn, SPEC, inputs, chunk_size=2)
    with engine.connect() as conn:
        stored = [item for _, item in load_items(conn, job.id, 0, 3)]
    assert stored == inputs


def test_the_cached_flag_goes_through_copy_and_out_in_exports(pg_url: str) -> None:
    engine = pg_engine(pg_url)
    job = new_job(engine, 3)
    rows = [ScoredItem(i, f"r{i}", GOOD, cached=i == 1) for i in range(3)]
    with engine.begin() as conn:
        write_results(conn, job.id, "m", "rev1", rows)
    with engine.connect() as conn:
        read = list(iter_results(conn, job.id, top_k_text=True))
    assert [row["cached"] for row in read] == [False, True, False]
    csv_text = "".join(export_lines(read, "csv")).splitlines()
    assert csv_text[0].endswith(",cached") and csv_text[2].endswith(",true")
    assert csv_text[1].endswith(",false")


# Texts that a CSV reader could take for something else: line breaks, quotes, commas, the
# spellings of null and not-a-number, an empty text, COPY's own escapes.
AWKWARD_TEXTS = ["line\nbreak\r\nagain", 'a "quoted", text', "NULL", "", "NaN", "\\N", "null"]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_item_metadata_goes_through_copy_and_the_parquet_export_equals_json_lines(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "postgresql":
        engine = pg_engine(request.getfixturevalue("pg_url"))
    else:
        engine = pg_engine(f"sqlite:///{tmp_path / 'results.db'}")
    inputs = [
        InputItem(item_id=f"r{i}", text=f"text \\N\t{i}", metadata={"lang": "é\t\\N", "n": str(i)})
        if i % 3
        else InputItem(item_id=f"r{i}", text=f"text {i}")
        for i in range(25)
    ] + [
        InputItem(item_id=f"{i:03d}", text=text, metadata={"q": text})
        for i, text in enumerate(AWKWARD_TEXTS, start=25)
    ]
    total = len(inputs)
    with engine.begin() as conn:
        job = create_job(conn, SPEC, inputs, chunk_size=total)
        # Not every index written yet: a window with gaps, and rows past them.
        write_results(conn, job.id, "m", None, scored([i for i in range(total) if i != 7]))
        # An input purged since (core.jobs.purge deletes the items rows): a row without
        # metadata or input.
        conn.execute(delete(items).where(and_(items.c.job_id == job.id, items.c.index == 4)))
    with engine.connect() as conn:
        lines = "".join(export_lines(iter_results(conn, job.id, with_input=True), "jsonl"))
    records = [json.loads(line) for line in lines.splitlines()]
    assert records[1]["metadata"] == {"lang": "é\t\\N", "n": "1"}
    assert "metadata" not in records[0] and records[1]["input"] == "text \\N\t1"
    assert [record["input"] for record in records[-len(AWKWARD_TEXTS) :]] == AWKWARD_TEXTS
    assert records[4]["input"] is None and "metadata" not in records[4]
    pages = stream_column_pages(engine.connect, job.id, total, 10, True)
    raw = b"".join(parquet_pieces(pages, True))
    table = pq.read_table(io.BytesIO(raw))
    assert pq.ParquetFile(io.BytesIO(raw)).metadata.num_row_groups == 4
    as_records = []
    for row in table.to_pylist():
        row["top_k"] = [[p["label"], p["score"]] for p in row["top_k"]] if row["top_k"] else None
        if row["metadata"] is None:
            del row["metadata"]
        else:
            row["metadata"] = dict(row["metadata"])
        as_records.append(row)
    assert as_records == records
