"""Loading the items of a batch of chunks in one query (core.chunks.batches.load_chunk_items)."""

from __future__ import annotations

from pathlib import Path

from core.chunks.batches import load_chunk_items
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import create_job, list_chunks, load_items
from core.migrate import upgrade
from core.models.registry import ModelSpec

SPEC = ModelSpec(name="m", task="text-classification", backend="transformers", source="/x")


def test_each_chunk_gets_exactly_its_own_items_in_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'items.db'}"
    upgrade(url)
    engine = get_engine(url)
    try:
        with engine.begin() as conn:
            first = create_job(
                conn,
                SPEC,
                [InputItem(f"a{i}", text=f"text {i}") for i in range(23)],
                chunk_size=5,
            )
            second = create_job(
                conn,
                SPEC,
                [
                    InputItem(
                        f"b{i}", text=None if i == 4 else f"b {i}", error="bad" if i == 4 else None
                    )
                    for i in range(9)
                ],
                chunk_size=4,
            )
        with engine.connect() as conn:
            chunks_a = list_chunks(conn, first.id)
            chunks_b = list_chunks(conn, second.id)
            # Not every chunk, out of order, across jobs: chunks 0, 2, 3 and 4 of the
            # first job (gaps between them), chunk 1 of the second (its error item).
            batch = [chunks_a[3], chunks_b[1], chunks_a[0], chunks_a[4], chunks_a[2]]
            loaded = load_chunk_items(conn, batch)
            expected = {
                (c.job_id, c.index): load_items(conn, c.job_id, c.start, c.stop) for c in batch
            }
        assert loaded == expected
        assert [index for index, _ in loaded[(second.id, 1)]] == [4, 5, 6, 7]
        assert loaded[(second.id, 1)][0][1].error == "bad"
        assert [len(rows) for rows in loaded.values()] == [5, 4, 5, 3, 5]
    finally:
        dispose_engines()
