"""The worker time a claim uses, charged to its jobs' key clocks, and when its turn ends.

Fair claiming ranks owner keys by the worker time they received (:mod:`core.chunks.fair`).
A worker holding chunks charges that time as it goes: :class:`WorkerTime` after the job's
turn is over, at each check that finds another job waiting and at most once a slice
otherwise (through :class:`TurnClock`), and once more in the transaction that ends the
claim (the finish, the hand-back, the release after a failure), so a key's clock is behind
by at most a turn while its chunk runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from time import monotonic

from sqlalchemy import Connection, Engine

from core.chunks.fair import Fairness, charge_service, chunks_waiting, outranked, turn_end
from core.clock import utcnow
from core.config import Settings

log = logging.getLogger(__name__)


class WorkerTime:
    """Worker time since the claim (or the last charge), not yet charged: shared among the
    claim's jobs by their item counts (a cross-job batch scores them in shared calls)."""

    def __init__(self, items_by_job: Mapping[str, int]) -> None:
        total = sum(items_by_job.values())
        self.shares = {
            job_id: (count / total if total else 1 / len(items_by_job))
            for job_id, count in items_by_job.items()
        }
        self.since = monotonic()

    def charge(self, conn: Connection) -> None:
        """Charge the time since the last charge in ``conn``'s transaction."""
        now = monotonic()
        seconds = now - self.since
        for job_id, share in self.shares.items():
            charge_service(conn, job_id, seconds * share)
        self.since = now


class TurnClock:
    """``should_yield`` for a chunk of ``job_id``: charges worker time once the turn is over,
    and says True once the job's turn is over (counted from the claim that opened it: a chunk
    that continues a turn gets what is left of it) and a queued chunk of a job ranked before
    it waits. Nothing during the turn; once it is over, an indexed probe per check for
    another job's queued chunk, and only if there is one (or a slice has passed since the
    last charge) a transaction: the charge, and the ranking.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        job_id: str,
        model: str,
        worker_time: WorkerTime,
    ) -> None:
        self.engine = engine
        self.job_id = job_id
        self.model = model
        self.fairness = Fairness.of(settings)
        self.slice_s = settings.fair_time_slice_s
        self.worker_time = worker_time
        with engine.connect() as conn:
            ends = turn_end(conn, job_id)
        left = (ends - utcnow()).total_seconds() if ends is not None else settings.fair_time_slice_s
        # A turn already over gives the chunk one window (the check comes between windows).
        self.ends = monotonic() + min(max(left, 0.0), settings.fair_time_slice_s)

    def __call__(self) -> bool:
        now = monotonic()
        if now < self.ends:
            return False  # the turn's time is charged at its end (or the claim's)
        try:
            with self.engine.connect() as conn:
                alone = not chunks_waiting(conn, self.model, besides=self.job_id)
            if alone and now - self.worker_time.since < self.slice_s:
                # Nobody to hand back to: a read, and a charge at most once a slice (the
                # clock a newcomer starts from is behind by no more), not a write and a
                # ranking of every active job at each part of a window.
                return False
            with self.engine.begin() as conn:
                self.worker_time.charge(conn)
                return not alone and outranked(conn, self.job_id, self.model, self.fairness)
        except Exception:
            # Only a scheduling hint: a failed look must not cost the chunk its work.
            log.warning("could not check for more urgent work", exc_info=True)
            return False
