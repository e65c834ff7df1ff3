"""engine.lookahead: the next window is predicted while this one's rows are built, one window
ahead at most, every runner call from one thread in window order; and inline when the
database cannot be shared between threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import create_job
from core.jobs.predictions import Prediction
from core.migrate import upgrade
from core.models.registry import ModelSpec
from core.tables import results
from engine import scoring
from engine.lookahead import Lookahead
from engine.runners.base import Progress, Runner

SPEC = ModelSpec(name="fake", task="text-classification", backend="transformers", source="/x")
WAIT_S = 5.0


class RecordingRunner(Runner):
    """Records each predict call's first text and thread; ``started`` is set per call."""

    name = "fake"
    revision = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.seen: list[list[str]] = []
        self.started = [threading.Event() for _ in range(64)]

    def setup(self, device: str = "cpu") -> None:
        pass

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        self.seen.append([str(text) for text in batch])
        self.calls.append((str(batch[0]), threading.current_thread().name))
        self.started[len(self.calls) - 1].set()
        if progress is not None:
            progress(len(batch))
        return [Prediction(label="pos", score=0.5) for _ in batch]


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'lookahead.db'}"
    upgrade(url)
    yield get_engine(url)
    dispose_engines()


def test_the_next_window_is_predicted_while_this_ones_rows_are_built(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Equal lengths: the windows keep index order (engine.window_order).
    inputs = [InputItem(item_id=str(i), text=f"text {i:03d}") for i in range(40)]
    with engine.begin() as conn:
        job = create_job(conn, SPEC, inputs, chunk_size=40)
    runner = RecordingRunner()
    overlapped: list[bool] = []
    ahead_at_most: list[bool] = []
    build_rows = scoring._rows

    def rows(predicting: Any, answers: Any) -> Any:
        window = predicting.position
        if window + 1 < 5:
            # The serial loop called predict for the next window only after this returned.
            overlapped.append(runner.started[window + 1].wait(WAIT_S))
        ahead_at_most.append(not runner.started[window + 1 + scoring.WINDOWS_IN_FLIGHT].is_set())
        return build_rows(predicting, answers)

    monkeypatch.setattr(scoring, "_rows", rows)
    run = scoring.score_jobs(
        engine, runner, [scoring.JobItems(job.id, list(enumerate(inputs)))], write_batch_size=8
    )
    assert run.totals[job.id].succeeded == 40
    assert overlapped == [True] * 4, "window n + 1 must be in predict while n's rows are built"
    assert all(ahead_at_most), "WINDOWS_IN_FLIGHT ahead at most (memory stays flat)"
    assert [first for first, _ in runner.calls] == [f"text {i:03d}" for i in (0, 8, 16, 24, 32)]
    threads = {thread for _, thread in runner.calls}
    assert len(threads) == 1 and threads != {threading.current_thread().name}
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(results)) == 40


def test_without_overlap_calls_run_at_once_and_errors_reach_the_caller() -> None:
    with Lookahead(overlap=False) as inline:
        here = threading.current_thread().name
        assert inline.start(lambda: threading.current_thread().name).result() == here
        failed = inline.start(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failed.result()
    with Lookahead() as background:
        assert background.start(lambda: threading.current_thread().name).result() != here


class SlowRunner(RecordingRunner):
    """Takes 5 ms per text, as a slow model would."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        self.batches.append([str(text) for text in batch])
        time.sleep(0.005 * len(batch))
        return super().predict(batch, progress)


def test_a_slow_windows_parts_are_checks_not_transactions(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``window_s``, once the pace is known a window runs in parts, ``should_yield`` is
    asked after each, and the parts of a window are still written in one transaction; a
    yield after a part writes what was scored and hands back the rest of the window."""
    inputs = [InputItem(item_id=str(i), text=f"text {i:03d}") for i in range(64)]
    with engine.begin() as conn:
        job = create_job(conn, SPEC, inputs, chunk_size=64)
    writes: list[int] = []
    write_scored = scoring.write_scored

    def counted(conn: Any, model: str, revision: Any, scored: Any, retrying: Any) -> Any:
        writes.append(len(scored))
        return write_scored(conn, model, revision, scored, retrying)

    monkeypatch.setattr(scoring, "write_scored", counted)
    runner = SlowRunner()
    asked: list[int] = []

    def should_yield() -> bool:
        asked.append(len(runner.calls))
        return len(runner.calls) >= 7  # a part of the window after the first

    run = scoring.score_jobs(
        engine,
        runner,
        [scoring.JobItems(job.id, list(enumerate(inputs)))],
        write_batch_size=16,
        should_yield=should_yield,
        window_s=0.02,
    )
    # The first window (16 texts, 80 ms) tells the pace; those started before it is known
    # run whole, the next ones in parts.
    sizes = [len(texts) for texts in runner.batches]
    whole = scoring.WINDOWS_IN_FLIGHT
    assert sizes[:whole] == [16] * whole and all(size <= 8 for size in sizes[whole:]), sizes
    # Asked after every part until it says yield; the one part started then still runs.
    assert len(asked) >= 4 and 0 <= len(sizes) - len(asked) <= scoring.WINDOWS_IN_FLIGHT - 1
    # Whole windows, one transaction each, then the parts scored before the yield.
    assert writes[:-1] == [16] * (len(writes) - 1) and 0 < writes[-1] <= 16, writes
    assert sum(writes) == run.totals[job.id].succeeded == sum(sizes) < 64
    lo, hi = run.yielded[job.id]
    assert hi == 64 and lo <= sum(writes)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(results)) == sum(writes)


class StagedRunner(RecordingRunner):
    """Starts a call's forward passes and finishes them later (``start_predict``), logging
    both; a finish of a batch holding ``bad`` raises, as a device error surfaces at the wait."""

    def __init__(self, bad: str = "") -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []
        self.bad = bad

    def start_predict(self, batch: Sequence[Any], progress: Progress | None = None) -> Any:
        first = str(batch[0])
        self.events.append(("start", first))

        def finish() -> list[Prediction]:
            self.events.append(("finish", first))
            if len(batch) > 1 and self.bad in batch:
                raise RuntimeError("device error")
            return self.predict(batch, progress)

        return finish


def test_a_windows_forward_passes_start_before_the_window_before_is_finished(
    engine: Engine,
) -> None:
    """The device gets window n + 1 before window n's top-k runs, and windows finish in the
    order they started; a batch that fails at its finish costs only its bad input."""
    inputs = [InputItem(item_id=str(i), text=f"text {i:03d}") for i in range(32)]
    with engine.begin() as conn:
        job = create_job(conn, SPEC, inputs, chunk_size=32)
    runner = StagedRunner(bad="text 013")
    run = scoring.score_jobs(
        engine, runner, [scoring.JobItems(job.id, list(enumerate(inputs)))], write_batch_size=8
    )
    firsts = [f"text {i:03d}" for i in (0, 8, 16, 24)]
    starts = [first for step, first in runner.events if step == "start" and first in firsts]
    finishes = [first for step, first in runner.events if step == "finish"]
    assert starts == firsts and finishes == firsts, "in window order"
    for n in range(3):
        started_next = runner.events.index(("start", firsts[n + 1]))
        assert started_next < runner.events.index(("finish", firsts[n])), runner.events
    assert (run.totals[job.id].succeeded, run.totals[job.id].failed) == (32, 0)
    # The failed batch was retried one input at a time: every item scored, none twice.
    singles = [batch for batch in runner.seen if len(batch) == 1]
    assert sorted(text for batch in singles for text in batch) == [
        f"text {i:03d}" for i in range(8, 16)
    ]
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(results)) == 32
