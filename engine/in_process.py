"""The in-process driver: a job made and scored by this process (``bulkscore score``).

The job is created like any other (:func:`core.jobs.submit.submit_job`, with no sender, as
:attr:`JobDriver.EMBEDDED`), and each of its chunks is claimed, leased, scored and finished
by :func:`engine.chunk_work.work_on_chunk`, exactly as a worker does with a delivered one. So
no chunk of an embedded job stays ``queued``, a re-run of the same job id scores only what is
missing, a second process on the same job is told the job is busy, and the service's workers
never claim or re-send its work (they only look at service jobs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Connection, Engine

from core.config import Settings
from core.inputs.items import InputItem
from core.jobs.inputs_hash import inputs_hash, store_inputs_hash
from core.jobs.lifecycle import Job, create_job, list_chunks
from core.jobs.status import JobDriver
from core.jobs.submit import submit_job
from core.models.registry import ModelSpec
from engine.chunk_work import work_on_chunk
from engine.delivery import ChunkOutcome, ChunkReport, Driver
from engine.runners.base import Progress, Runner


def create_embedded_job(
    engine: Engine,
    spec: ModelSpec,
    inputs: Sequence[InputItem],
    job_id: str | None = None,
    *,
    use_cache: bool = True,
) -> Job:
    """A queued job of ``inputs`` in one chunk, for this process alone to score, with the
    hash of its inputs.

    ``use_cache=False`` (``bulkscore score --no-cache``): scored afresh, nothing stored.
    """
    digest = inputs_hash(inputs)

    def create(conn: Connection) -> Job:
        # One chunk: the write windows inside it already make a crashed run resumable.
        job = create_job(
            conn,
            spec,
            inputs,
            chunk_size=max(len(inputs), 1),
            job_id=job_id,
            driver=JobDriver.EMBEDDED,
            use_cache=use_cache,
        )
        # So that a re-run of the same id with other inputs is refused (cli.score_run).
        store_inputs_hash(conn, job.id, digest)
        return replace(job, inputs_hash=digest)

    return submit_job(engine, create, send=None).job


@dataclass(frozen=True, slots=True)
class InProcessRun:
    """What scoring an embedded job did, over all its chunks."""

    scored: int = 0  # rows written now (labels and per-item errors)
    already_scored: int = 0  # rows an earlier run had written
    busy: ChunkReport | None = None  # a chunk another process holds (its report)


def score_in_process(
    engine: Engine,
    settings: Settings,
    job_id: str,
    runner: Runner,
    progress: Progress | None = None,
) -> InProcessRun:
    """Claim and score every unfinished chunk of embedded job ``job_id`` with ``runner``.

    Raises:
        engine.delivery.ChunkAttemptError: The runner failed outside any one item; the
            chunk was given back, so a re-run takes it up again.
    """
    with engine.connect() as conn:
        indexes = [chunk.index for chunk in list_chunks(conn, job_id)]
    driver = Driver.embedded(runner, progress)
    scored = already = 0
    for index in indexes:
        report = work_on_chunk(engine, settings, job_id, index, driver)
        scored += report.scored
        already += report.already_scored
        if report.outcome == ChunkOutcome.BUSY:
            return InProcessRun(scored, already, busy=report)
    return InProcessRun(scored, already)
