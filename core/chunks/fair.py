"""Fair claiming: which queued chunk of a model runs next, decided in SQL.

A chunk message is a token that says "one chunk of model M is waiting", not an order to
run that chunk: whatever chunk a delivered message names, the worker claims the chunk that
is fairest to run next for M (:func:`claim_fairest`). Redis delivers messages first in,
first out, so without this a 5-text job waits for every chunk of a 5,000-text job sent
before it, and one key's nightly export blocks every other key's work.

The order, one ``ORDER BY`` over the queued chunks of the service's active jobs on M:

1. **Effective priority level**: ``high`` before ``normal`` before ``low``
   (:class:`core.jobs.priority.Priority`). A job's level rises by one for each
   ``priority_aging_s`` it has waited since it was last served (or created), so a ``low``
   job behind a steady stream of ``normal`` work still gets a chunk now and then.
2. **Fair shares across owner keys**: the key with the fewest chunks running first; then
   a job whose turn is still open (below); then the key that has had the least worker time
   on M (its **clock**, below; a key none of whose active jobs was served yet comes first);
   then the key served least recently (the latest ``jobs.last_served_at`` of its jobs).
3. **Round-robin across a key's jobs**: the job served least recently first.
4. **Oldest first within a job**: the job's created order, then the chunk's first item
   (``chunks.start``), not its index: a rest handed back (:func:`core.chunks.split.hand_back`)
   or a bisected half gets a new, higher index but holds the job's earliest unscored items,
   and it runs before the job's later chunks. By index, every chunk's rest went to the back
   of its job: a job then ran the first windows of each of its chunks (a chunk's shortest
   texts and most items per second, ``engine.window_order``) and left all their slow rests
   for later, so a job that arrived second, at its chunks' fast starts, scored 1.5-2 times
   the items per second of the first one in the same turns (``bench/fair_scheduling.py``).

Claiming stamps the job's ``last_served_at``, which moves it (and its key) to the back of
its level, and opens the job's **turn**: ``Fairness.turn_s`` (the worker's time slice)
from that stamp. A turn belongs to the job, not to one chunk: when the chunk ends before
the turn does (a short rest of a chunk handed back earlier), the job's next chunk is
claimed first and runs for what is left of the turn, without a new stamp. Turns counted per
claim instead gave a job whose chunks kept running out a fraction of a slice per turn
against a whole one for the other key (0.72 of its item rate, ``bench/fair_scheduling.py``).

A turn ends at the first write window boundary past its end, so turns run up to a window
long (1.0-2.2 s for a 1 s slice), and which key drew the long ones decided its share as
long as keys took turns. So keys are ranked by the worker time they received instead
(start-time fair queueing): a worker charges the time it spends to its job's key's
**clock** on M (:func:`charge_service`, table ``key_clocks``). A key that got a long turn
waits until the others have had as much: the lag between two keys stays within one turn
instead of adding up. A key that comes (back) with no active job served yet starts at the
lowest clock of the keys already active (:func:`stamp_served`), neither owed the time it
was away nor behind a key that ran alone for an hour.

Message counts still balance: each delivery claims at most one queued chunk, and
a queued chunk always has at least one message that will come for some chunk of M; a
delivery that finds nothing queued falls back to its own chunk (a lease to take over, or a
no-op), and the lost-message sweep and redelivery are unchanged.

Two workers never take the same chunk: the candidate row is locked ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL (a second worker skips to the next fairest chunk instead of waiting)
and the claim itself is the same conditional ``UPDATE`` as :func:`core.chunks.claim.claim_chunk`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Select,
    and_,
    case,
    exists,
    func,
    literal,
    literal_column,
    select,
    update,
)

from core.chunks.claim import Claim, as_utc, service_jobs, take_chunk
from core.clock import utcnow
from core.jobs.bulk_copy import dialect_insert
from core.jobs.priority import Priority
from core.jobs.status import ChunkStatus
from core.tables import chunks, jobs, key_clocks, training_runs

if TYPE_CHECKING:
    from core.config import Settings

# Levels an aging job may climb (low -> normal -> high).
_MAX_BOOST = Priority.LOW.level - Priority.HIGH.level


def _owner() -> ColumnElement[Any]:
    # Jobs without an owner key (a service run without auth) share one round-robin slot.
    # Inline 0, not a bound parameter: PostgreSQL must see GROUP BY and SELECT as one expression.
    return func.coalesce(jobs.c.owner_key_id, literal_column("0"))


def effective_level(now: datetime, aging_s: float) -> ColumnElement[int]:
    """A job's priority level (0 = high) less one per ``aging_s`` waited, never below 0.

    Waiting counts from the job's last claim, or its creation: a job being served keeps its
    level; only one left waiting climbs.
    """
    level = case(
        (jobs.c.priority == Priority.HIGH.value, Priority.HIGH.level),
        (jobs.c.priority == Priority.LOW.value, Priority.LOW.level),
        else_=Priority.NORMAL.level,
    )
    if aging_s <= 0:
        return level
    waiting_since = func.coalesce(jobs.c.last_served_at, jobs.c.created_at)
    boost = case(
        *[
            (waiting_since <= now - timedelta(seconds=aging_s * steps), steps)
            for steps in range(_MAX_BOOST, 0, -1)
        ],
        else_=0,
    )
    return case((level - boost < 0, 0), else_=level - boost)


def _key_clock(model: str, now: datetime) -> Any:
    """Per owner key, over its active service jobs on ``model``: the chunks it has running
    now, its clock (the worker time it received; NULL while none of its jobs was served)
    and the latest claim of any of its jobs.

    Running chunks are counted by one aggregate over the running chunks (a few per worker),
    not per job: a claim must cost the same behind ten jobs or ten thousand chunks.
    """
    running = (
        select(_owner().label("owner"), func.count().label("running"))
        .select_from(chunks.join(jobs, jobs.c.id == chunks.c.job_id))
        .where(and_(chunks.c.status == ChunkStatus.RUNNING.value, service_jobs([model], now)))
        .group_by(_owner())
        .subquery("key_running")
    )
    served = (
        select(_owner().label("owner"), func.max(jobs.c.last_served_at).label("key_last"))
        .where(service_jobs([model], now))
        .group_by(_owner())
        .subquery("key_served")
    )
    # A key's clock counts once one of its active jobs was served: until then the key is
    # new here (first in line), and its first claim sets the clock (_start_clocks).
    key_clock = case(
        (
            served.c.key_last.is_not(None),
            func.coalesce(key_clocks.c.clock_s, literal_column("0.0")),
        )
    )
    return (
        select(
            served.c.owner,
            func.coalesce(running.c.running, literal_column("0")).label("key_running"),
            key_clock.label("key_clock"),
            served.c.key_last,
        )
        .select_from(
            served.outerjoin(running, running.c.owner == served.c.owner).outerjoin(
                key_clocks,
                and_(key_clocks.c.owner == served.c.owner, key_clocks.c.runs_on == model),
            )
        )
        .subquery("key_clock")
    )


@dataclass(frozen=True, slots=True)
class Fairness:
    """The settings of the order: see :mod:`core.chunks.fair`."""

    aging_s: float
    # How long a job's turn lasts from its claim (0: a turn ends with its chunk).
    turn_s: float = 0.0

    @classmethod
    def of(cls, settings: Settings) -> Fairness:
        return cls(aging_s=settings.priority_aging_s, turn_s=settings.fair_time_slice_s)


def turn_open(now: datetime) -> ColumnElement[bool]:
    """Whether a job's turn, opened by its latest claim, still runs at ``now``."""
    return and_(jobs.c.turn_ends_at.is_not(None), jobs.c.turn_ends_at > now)


def ranked(
    model: str, fairness: Fairness, now: datetime, *columns: Any, training: bool = True
) -> Select[Any]:
    """``columns`` of the service's active jobs on ``model`` joined with their chunks and
    their rank columns, in fair order (chunks filtered by the caller)."""
    clock = _key_clock(model, now)
    query = (
        select(*columns)
        .select_from(
            chunks.join(jobs, jobs.c.id == chunks.c.job_id).join(clock, clock.c.owner == _owner())
        )
        .where(service_jobs([model], now))
        .order_by(*_job_order(clock, fairness, now), *_within_job())
    )
    if not training:
        query = query.where(~exists().where(training_runs.c.job_id == jobs.c.id))
    return query


def _job_order(clock: Any, fairness: Fairness, now: datetime) -> list[Any]:
    return [
        effective_level(now, fairness.aging_s),
        clock.c.key_running,
        case((turn_open(now), 0), else_=1),
        clock.c.key_clock.asc().nulls_first(),
        clock.c.key_last.asc().nulls_first(),
        jobs.c.last_served_at.asc().nulls_first(),
        jobs.c.created_at,
        jobs.c.id,
    ]


def _within_job() -> list[Any]:
    # The job's earliest unscored items first, whichever chunk holds them (point 4 above).
    return [chunks.c.start, chunks.c.index]


def _claimable(job_id: Any, max_attempts: int) -> ColumnElement[bool]:
    return and_(
        chunks.c.job_id == job_id,
        chunks.c.status == ChunkStatus.QUEUED.value,
        chunks.c.attempts < max_attempts,
    )


# Jobs looked at per claim: the fairest, and a few more in case another worker holds the
# fairest one's last queued chunk (skipped, not waited for).
CANDIDATE_JOBS = 4


def claim_fairest(
    conn: Connection,
    model: str,
    fairness: Fairness,
    *,
    lease_s: float,
    max_attempts: int,
    training: bool = True,
    now: datetime | None = None,
) -> Claim | None:
    """Claim the fairest queued chunk of ``model`` for one attempt; None if none waits.

    Only chunks with attempts left qualify (an exhausted one is bisected by the reconciler
    or by a delivery of its own message). ``training``: whether this driver can also run a
    training job's chunk. Call inside a transaction.
    """
    now = now or utcnow()
    clock = _key_clock(model, now)
    # The fairest jobs first (a ranking over jobs, not chunks), then the job's first
    # claimable chunk, locked FOR UPDATE SKIP LOCKED, then the conditional claim.
    fairest = (
        select(jobs.c.id)
        .select_from(jobs.join(clock, clock.c.owner == _owner()))
        .where(
            and_(
                service_jobs([model], now),
                exists().where(_claimable(jobs.c.id, max_attempts)),
            )
        )
        .order_by(*_job_order(clock, fairness, now))
        .limit(CANDIDATE_JOBS)
    )
    if not training:
        fairest = fairest.where(~exists().where(training_runs.c.job_id == jobs.c.id))
    for (job_id,) in conn.execute(fairest).all():
        index = conn.scalar(
            select(chunks.c.index)
            .where(_claimable(job_id, max_attempts))
            .order_by(*_within_job())
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if index is None:
            continue
        claim = take_chunk(
            conn,
            str(job_id),
            int(index),
            _claimable(job_id, max_attempts),
            lease_s=lease_s,
            now=now,
        )
        if claim is not None:
            stamp_served(conn, [str(job_id)], now, fairness)
            return claim
    return None


def stamp_served(
    conn: Connection,
    job_ids: Collection[str],
    now: datetime | None = None,
    fairness: Fairness | None = None,
) -> None:
    """Move ``job_ids`` (and so their keys) to the back of their level's round-robin, and
    open their turns of ``fairness.turn_s``; a job whose turn is still open keeps it as it
    is. A job served for the first time starts its key clock (:func:`_start_clocks`)."""
    if not job_ids:
        return
    now = now or utcnow()
    chosen: ColumnElement[bool] = jobs.c.id.in_(list(job_ids))
    _start_clocks(conn, chosen, now)
    if fairness is None or fairness.turn_s <= 0:
        conn.execute(update(jobs).where(chosen).values(last_served_at=now))
        return
    conn.execute(
        update(jobs)
        .where(and_(chosen, ~turn_open(now)))
        .values(last_served_at=now, turn_ends_at=now + timedelta(seconds=fairness.turn_s))
    )


def _start_clocks(conn: Connection, chosen: ColumnElement[bool], now: datetime) -> None:
    """Start the clock of each key that none of its active jobs among ``chosen``'s models was
    served yet (new there, or back after a while) at the lowest clock of the keys that have
    one (0 when there are none): neither owed the time it was away, nor behind a key that
    ran alone for an hour."""
    newcomers = conn.execute(
        select(_owner().label("owner"), jobs.c.runs_on)
        .where(and_(chosen, jobs.c.last_served_at.is_(None)))
        .distinct()
    ).all()
    for model in {row.runs_on for row in newcomers}:
        clock = _key_clock(model, now)
        clocks = {
            int(owner): key_clock
            for owner, key_clock in conn.execute(select(clock.c.owner, clock.c.key_clock))
        }
        lowest = min((float(c) for c in clocks.values() if c is not None), default=0.0)
        for row in newcomers:
            if row.runs_on == model and clocks.get(row.owner) is None:
                _set_clock(conn, row.owner, model, lowest)


def _set_clock(conn: Connection, owner: int, model: str, clock_s: float) -> None:
    statement = dialect_insert(conn, key_clocks).values(owner=owner, runs_on=model, clock_s=clock_s)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["owner", "runs_on"], set_={"clock_s": statement.excluded.clock_s}
        )
    )


def charge_service(conn: Connection, job_id: str, seconds: float) -> None:
    """Charge ``seconds`` of a worker's time to the clock of ``job_id``'s key on its model
    (one row, however many jobs the key has)."""
    if seconds <= 0:
        return
    statement = dialect_insert(conn, key_clocks).from_select(
        ["owner", "runs_on", "clock_s"],
        select(_owner(), jobs.c.runs_on, literal(float(seconds), Float)).where(jobs.c.id == job_id),
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["owner", "runs_on"],
            set_={"clock_s": key_clocks.c.clock_s + statement.excluded.clock_s},
        )
    )


def turn_end(conn: Connection, job_id: str) -> datetime | None:
    """When ``job_id``'s current (or last) turn ends; None: it never had one."""
    ends = conn.scalar(select(jobs.c.turn_ends_at).where(jobs.c.id == job_id))
    return as_utc(ends) if ends is not None else None


@dataclass(frozen=True, slots=True)
class JobRank:
    """One active job's place in the fair order, with what it has waiting."""

    level: int
    key_running: int
    turn_open: bool
    key_clock: float | None
    key_last: datetime | None
    job_last: datetime | None
    created_at: datetime
    job_id: str
    owner: int
    queued: int

    def sort_key(self, running_delta: int = 0) -> tuple[Any, ...]:
        """The ``ORDER BY`` of :func:`ranked` as a tuple (never-served clocks first)."""
        return (
            self.level,
            self.key_running + running_delta,
            not self.turn_open,
            self.key_clock is not None,
            self.key_clock or 0.0,
            self.key_last is not None,
            self.key_last or self.created_at,
            self.job_last is not None,
            self.job_last or self.created_at,
            self.created_at,
            self.job_id,
        )


def job_ranks(
    conn: Connection, model: str, fairness: Fairness, now: datetime | None = None
) -> list[JobRank]:
    """Every active service job on ``model`` with its rank and queued chunk count, fairest
    first."""
    now = now or utcnow()
    clock = _key_clock(model, now)
    queued = (
        select(func.count())
        .where(and_(chunks.c.job_id == jobs.c.id, chunks.c.status == ChunkStatus.QUEUED.value))
        .scalar_subquery()
    )
    rows = conn.execute(
        select(
            effective_level(now, fairness.aging_s).label("level"),
            clock.c.key_running,
            case((turn_open(now), True), else_=False).label("turn_open"),
            clock.c.key_clock,
            clock.c.key_last,
            jobs.c.last_served_at,
            jobs.c.created_at,
            jobs.c.id,
            clock.c.owner,
            queued.label("queued"),
        )
        .select_from(jobs.join(clock, clock.c.owner == _owner()))
        .where(service_jobs([model], now))
    ).all()
    found = [
        JobRank(
            level=int(row.level),
            key_running=int(row.key_running or 0),
            turn_open=bool(row.turn_open),
            key_clock=None if row.key_clock is None else float(row.key_clock),
            key_last=row.key_last,
            job_last=row.last_served_at,
            created_at=row.created_at,
            job_id=str(row.id),
            owner=int(row.owner),
            queued=int(row.queued or 0),
        )
        for row in rows
    ]
    return sorted(found, key=JobRank.sort_key)


def chunks_waiting(conn: Connection, model: str, *, besides: str | None = None) -> bool:
    """Whether a service job (other than ``besides``) has a queued chunk of ``model``: one
    indexed probe, the cheap question before a ranking of every active job (a claim, a
    hand-back, a status poll's place in the queue)."""
    now = utcnow()
    condition = and_(chunks.c.status == ChunkStatus.QUEUED.value, service_jobs([model], now))
    if besides is not None:
        condition = and_(condition, jobs.c.id != besides)
    waiting = (
        select(chunks.c.job_id)
        .select_from(chunks.join(jobs, jobs.c.id == chunks.c.job_id))
        .where(condition)
        .limit(1)
    )
    return conn.execute(waiting).first() is not None


def outranked(
    conn: Connection, job_id: str, model: str, fairness: Fairness, now: datetime | None = None
) -> bool:
    """Whether handing back a running chunk of ``job_id`` would let another job's queued
    chunk of ``model`` go first (the question a worker holding the chunk asks between write
    windows, once the job's turn is over).

    Asked as if the chunk were already handed back (its key runs one chunk fewer), so two
    workers on two jobs do not keep trading places."""
    now = now or utcnow()
    ranks = job_ranks(conn, model, fairness, now)
    own = next((rank for rank in ranks if rank.job_id == job_id), None)
    if own is None:
        return False  # no longer active: the write finds out and stops
    mine = own.sort_key(-1)
    return any(
        rank.job_id != job_id
        and rank.queued
        and rank.sort_key(-1 if rank.owner == own.owner else 0) < mine
        for rank in ranks
    )


def chunks_ahead(conn: Connection, job_id: str, model: str, fairness: Fairness) -> int:
    """How many chunks of other jobs on ``model`` run before ``job_id``'s next chunk if
    nothing more urgent arrives: every queued chunk of a job at a higher effective level,
    and one per job ranked before it at its own level (round-robin).

    Only other jobs' queued chunks count, so where there are none (a lone job, the usual
    case for a status poll) the answer is 0 from one indexed probe instead of a ranking of
    every active job: a poll of a running job took 7.2 ms of the API's CPU against 9 ms, ten
    polls a second of a client waiting on a 20,000-text job on the 2-core VM (issue 16)."""
    if not chunks_waiting(conn, model, besides=job_id):
        return 0
    return ahead_of(job_ranks(conn, model, fairness), job_id)


def ahead_of(ranks: Sequence[JobRank], job_id: str) -> int:
    """:func:`chunks_ahead` from the ranking of every active job (:func:`job_ranks`)."""
    own = next((rank for rank in ranks if rank.job_id == job_id), None)
    if own is None:
        return 0
    ahead = 0
    for rank in ranks:
        if rank.job_id == job_id:
            break
        if rank.queued:
            ahead += rank.queued if rank.level < own.level else 1
    return ahead


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What ``/metrics`` shows of the fair order."""

    # Queued chunks of the service's active jobs, by the jobs' (declared) priority.
    queued_by_priority: dict[str, int]
    # Per model (``runs_on``): seconds the longest-waiting job with queued chunks has gone
    # since its last chunk was claimed (or since it was created): starvation shows here.
    oldest_wait_s: dict[str, float]


def queue_stats(conn: Connection, now: datetime | None = None) -> QueueStats:
    now = now or utcnow()
    active = service_jobs(None, now)
    queued = and_(active, chunks.c.status == ChunkStatus.QUEUED.value)
    joined = chunks.join(jobs, jobs.c.id == chunks.c.job_id)
    by_priority: dict[str, int] = dict(
        conn.execute(
            select(jobs.c.priority, func.count())
            .select_from(joined)
            .where(queued)
            .group_by(jobs.c.priority)
        ).all()
    )
    waiting_since = func.min(func.coalesce(jobs.c.last_served_at, jobs.c.created_at))
    oldest = {
        str(model): max((now - as_utc(since)).total_seconds(), 0.0)
        for model, since in conn.execute(
            select(jobs.c.runs_on, waiting_since)
            .select_from(joined)
            .where(queued)
            .group_by(jobs.c.runs_on)
        ).all()
        if since is not None
    }
    return QueueStats(
        {level.value: int(by_priority.get(level.value, 0)) for level in Priority}, oldest
    )
