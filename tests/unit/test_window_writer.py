"""engine.window_writer: writes overlap the next window's scoring, one at a time, in order;
and the pipelined scoring loop writes exactly what the serial one writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select

from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import create_job
from core.jobs.predictions import Prediction
from core.migrate import upgrade
from core.models.registry import ModelSpec
from core.tables import results
from engine import scoring
from engine.runners.base import Progress, Runner
from engine.scoring import JobItems, score_jobs
from engine.window_writer import WindowWriter, writes_overlap

SPEC = ModelSpec(name="fake", task="text-classification", backend="transformers", source="/x")


def test_writes_run_beside_the_caller_one_at_a_time_and_in_order() -> None:
    started: list[int] = []
    taken: list[int] = []
    release = threading.Event()
    in_flight = 0
    most = 0
    lock = threading.Lock()

    def write(number: int) -> int:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        started.append(number)
        if number == 0:
            assert release.wait(5), "the caller went on while the first write ran"
        with lock:
            in_flight -= 1
        return number

    with WindowWriter(write, taken.append) as writer:
        writer.submit(0)
        # The caller is free while write 0 runs: it "scores" the next window here.
        release.set()
        writer.submit(1)  # takes write 0's result first
        assert taken == [0]
        writer.submit(2)
    assert taken == [0, 1, 2]
    assert started == [0, 1, 2] and most == 1


def test_a_failed_write_raises_in_the_caller() -> None:
    def write(number: int) -> int:
        if number == 1:
            raise ConnectionError("database went away")
        return number

    taken: list[int] = []
    with pytest.raises(ConnectionError), WindowWriter(write, taken.append) as writer:
        writer.submit(0)
        writer.submit(1)
        writer.submit(2)  # takes write 1's result: raises here
    assert taken == [0]


def test_no_background_thread_for_an_in_memory_sqlite_database(tmp_path: Path) -> None:
    assert not writes_overlap(create_engine("sqlite://"))
    assert writes_overlap(create_engine(f"sqlite:///{tmp_path / 'x.db'}"))
    assert writes_overlap(create_engine("postgresql+psycopg://u@h/d"))


class SlowRunner(Runner):
    """Deterministic scores from each text; sleeps a little per batch (a forward pass)."""

    name = "fake"
    revision = None

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        time.sleep(0.002)
        if progress is not None:
            progress(len(batch))
        return [
            Prediction(label=f"l{len(str(t)) % 3}", score=(hash(str(t)) % 1000) / 1000)
            for t in batch
        ]


@pytest.fixture()
def engines(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    made = []
    for name in ("pipelined", "serial"):
        url = f"sqlite:///{tmp_path / name}.db"
        upgrade(url)
        made.append(get_engine(url))
    yield made[0], made[1]
    dispose_engines()


def test_the_pipelined_loop_writes_what_the_serial_loop_writes(
    engines: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"review {i} " + "word " * (i % 17) for i in range(300)]
    inputs = [InputItem(item_id=str(i), text=t) for i, t in enumerate(texts)]
    rows = []
    for engine, overlap in zip(engines, (True, False), strict=True):
        monkeypatch.setattr(scoring, "writes_overlap", lambda _engine, on=overlap: on)
        with engine.begin() as conn:
            job = create_job(conn, SPEC, inputs, chunk_size=300, job_id="f" * 32)
        items = list(enumerate(inputs))
        run = score_jobs(engine, SlowRunner(), [JobItems(job.id, items)], write_batch_size=16)
        assert run.totals[job.id].succeeded == 300
        with engine.connect() as conn:
            rows.append(
                conn.execute(
                    select(results.c.index, results.c.label, results.c.score).order_by(
                        results.c.index
                    )
                ).all()
            )
    pipelined, serial = rows
    assert len(pipelined) == len(serial) == 300
    for a, b in zip(pipelined, serial, strict=True):
        assert (a.index, a.label) == (b.index, b.label)
        assert abs(a.score - b.score) <= 1e-6
