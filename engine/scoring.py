"""The one function that turns jobs' items into rows of the results table.

``bulkscore score`` (in-process) and the Celery chunk task both call :func:`score_jobs`
(``score_items`` is its one-job form); only the driver differs. The chunk task passes the
items of several small jobs at once when it batches across jobs (``engine.cross_job``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from core.inputs.items import InputItem
from core.jobs.predictions import Prediction, PredictionList
from core.jobs.result_rows import ResultRows
from core.jobs.results import WriteOutcome, scored_indexes_many
from core.jobs.retry_marks import pending_retries_many, write_scored
from engine.lookahead import Lookahead
from engine.reuse import Answers, Entry, PredictionReuse, jobs_using_cache
from engine.runners.base import Finish, Progress, Runner, start_predicting
from engine.window_order import WindowPacer, scoring_windows
from engine.window_writer import WindowWriter, writes_overlap

log = logging.getLogger(__name__)

# Windows whose texts are announced to the runner before they are scored: two, so that the
# tokenizer thread has the next window to work on while the main thread builds rows and
# hands them to the writer, instead of idling until the next window starts.
TOKENISED_AHEAD = 2
# Windows started at a time: two, so that the lookahead thread queues a window's forward
# passes before it finishes (top-k) the window before, and a GPU or the stand-in goes from
# one window to the next without waiting for Python. With one, a window of one forward pass
# padded, ran and ranked one step after the other: at the stand-in's tokenizer rate its
# device was busy 55-59% of the time (bench/README.md, issue 16). A cancel or a hand-back
# lets the window started already finish and be written.
WINDOWS_IN_FLIGHT = 2


@dataclass(slots=True)
class ScoreTotals:
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0  # already had a result row (a re-run): counted, not written again

    def add(self, outcome: WriteOutcome, attempted: int) -> None:
        self.succeeded += outcome.succeeded
        self.failed += outcome.failed
        self.skipped += attempted - outcome.written


def runner_input(item: InputItem) -> object:
    """What the runner gets for an item: its text, or its raw bytes for images."""
    return item.text if item.text is not None else item.data


def start_isolating_failures(
    runner: Runner, inputs: Sequence[object], progress: Progress | None = None
) -> Finish:
    """``runner.start_predict``, but an exception costs only the inputs that cause it.

    A batch that fails when started or when finished is retried one input at a time (at
    its finish), so one bad input becomes one per-item error and the rest of the batch is
    still scored.
    """

    def one_by_one() -> list[Prediction]:
        predictions = []
        for value in inputs:
            try:
                predictions.extend(runner.predict([value]))
            except Exception as exc:  # a per-item error, recorded with its reason
                predictions.append(Prediction.failure(f"{type(exc).__name__}: {exc}"[:2000]))
            if progress is not None:
                progress(1)
        return predictions

    def failed() -> None:
        log.exception("batch of %d failed in %s; retrying one by one", len(inputs), runner.name)

    try:
        finish = start_predicting(runner, inputs, progress)
    except Exception:
        failed()
        return one_by_one

    def finished() -> Sequence[Prediction]:
        try:
            predictions = finish()
            if len(predictions) != len(inputs):
                raise RuntimeError(
                    f"runner returned {len(predictions)} results for {len(inputs)} inputs"
                )
            return predictions
        except Exception:
            failed()
        return one_by_one()

    return finished


@dataclass(frozen=True, slots=True)
class JobItems:
    """Items of one job to score: ``(index, item)`` pairs in index order."""

    job_id: str
    items: Sequence[tuple[int, InputItem]]


def score_items(
    engine: Engine,
    job_id: str,
    runner: Runner,
    indexed_items: Sequence[tuple[int, InputItem]],
    *,
    write_batch_size: int = 512,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    dedup: bool = True,
    cache: bool = True,
) -> ScoreTotals:
    """Score ``indexed_items`` of job ``job_id`` and write their results, batch by batch.

    Items that already have a result row are skipped (a re-run writes nothing twice; the
    unique key makes that hold even when two runs race). Items refused at intake become
    per-item error rows without reaching the model.
    """
    stop_check = None if should_stop is None else (lambda ids: set() if should_stop() else ids)
    run = score_jobs(
        engine,
        runner,
        [JobItems(job_id, indexed_items)],
        write_batch_size=write_batch_size,
        progress=progress,
        still_active=stop_check,
        dedup=dedup,
        cache=cache,
    )
    return run.totals.get(job_id, ScoreTotals())


@dataclass(frozen=True, slots=True)
class ScoreRun:
    """What :func:`score_jobs` did."""

    totals: dict[str, ScoreTotals]
    # Jobs stopped midway: cancelled or expired (checked before each window), or refused
    # by the write itself because they became final meanwhile.
    stopped: set[str]
    # Jobs whose remaining items were left unscored because ``should_yield`` asked for the
    # worker: job id -> ``(lo, hi)``, the index range holding every unscored item (items in
    # it that were scored have their rows, which a later run skips).
    yielded: dict[str, tuple[int, int]]


def score_jobs(
    engine: Engine,
    runner: Runner,
    work: Sequence[JobItems],
    *,
    write_batch_size: int = 512,
    progress: Progress | None = None,
    still_active: Callable[[set[str]], set[str]] | None = None,
    should_yield: Callable[[], bool] | None = None,
    dedup: bool = True,
    cache: bool = True,
    window_s: float = 0.0,
    more_work: Callable[[], Sequence[JobItems]] | None = None,
) -> ScoreRun:
    """:func:`score_items` for the items of several jobs of one model, scored together.

    The items of every job go through ``runner.predict`` in shared calls (so many small
    jobs fill batches as one big job does), and each write window is one transaction that
    writes every job's rows and advances every job's own counters.

    Args:
        still_active: Given the job ids of a window, the ones that may still be scored
            (not cancelled); checked before each window, so that a cancelled job's items
            are not scored for nothing. A job that drops out is scored no further.
        should_yield: Asked between write windows (and their parts: ``window_s``), never
            before the first: True stops there, leaving the rest unscored
            (:attr:`ScoreRun.yielded`), so that the caller can hand it back and let more
            urgent work run first.
        dedup: Each distinct input (a text, or an image's bytes) of the whole call goes
            through ``runner.predict`` once; every item that holds it gets its own row
            with the same prediction (``engine.reuse``). False: every item is predicted.
        cache: Look up the result cache before predicting and fill it after each write,
            for the jobs that did not ask for fresh scores (``jobs.use_cache``).
        window_s: Once the runner's pace is known, windows hold about this many seconds of
            work (:class:`engine.window_order.WindowPacer`): a fast model's are merged, so
            that per-window costs (a transaction, a check) are spread over more items, and
            with ``should_yield`` a slow model's are scored in parts, so that it is asked
            about this often. 0: windows by count only.
        more_work: Asked for more items of the call's jobs once half of the entries
            planned so far are in windows about to start (and again after each time it
            gave some): they are planned after the windows planned and scored in the same
            pipeline, which so does not drain and fill again between one claim and the
            next. Nothing: not asked again.

    Texts are windowed in length order across the whole call, so that each write window is
    as uniform as one big length-sorted batch: small windows (frequent writes and checks)
    then cost no extra padding. A window of long texts holds fewer of them (windows take
    about the same time), and the windows run in an order that keeps every stretch of work
    near the call's mean item rate, which a handed-back rest continues
    (:mod:`engine.window_order`).

    The stages overlap: the runner tokenises the windows two ahead in its own thread
    (``runner.prefetch``); the next window is predicted in another
    (:class:`engine.lookahead.Lookahead`) while this one's rows are built, its forward
    passes queued (``runner.start_predict``) before the window before it is finished
    (top-k), so a GPU or the stand-in's device goes from window to window; and the window
    before is written in a third thread (:class:`engine.window_writer.WindowWriter`).

    Returns:
        Totals per job, the jobs stopped by ``still_active`` or by the write itself (which
        refuses a job that became final: a cancel that landed while its window was being
        scored; see :func:`core.jobs.results.lock_active_jobs`), and where each job yielded.
    """
    totals = {unit.job_id: ScoreTotals() for unit in work}
    pending, retrying = _without_scored(engine, work, totals, progress)
    everything = [(unit.job_id, index, item) for unit in work for index, item in unit.items]
    # Images (no length) and equal lengths keep index order.
    windows = scoring_windows(everything, pending, write_batch_size, _text_length)
    # Parts of a window exist to ask ``should_yield`` between them: without it, none.
    pacer = WindowPacer(
        runner,
        windows,
        window_s,
        _text_length,
        split=should_yield is not None,
        least_windows=WINDOWS_IN_FLIGHT,
    )
    reuse = PredictionReuse(
        engine,
        runner,
        lambda inputs, report: start_isolating_failures(runner, inputs, report),
        cache_jobs=jobs_using_cache(engine, {job_id for job_id, _, _ in pending}) if cache else (),
        dedup=dedup,
    )
    stopped: set[str] = set()
    asking = more_work is not None

    def extend() -> None:
        """Ask ``more_work`` for items, and plan their windows after the ones planned."""
        nonlocal asking
        assert more_work is not None
        added = [unit for unit in more_work() if unit.items]
        if not added:
            asking = False
            return
        for unit in added:
            totals.setdefault(unit.job_id, ScoreTotals())
        new_pending, new_retrying = _without_scored(engine, added, totals, progress)
        for job_id, indexes in new_retrying.items():
            # A new set, not an update of one the writer thread may be reading.
            retrying[job_id] = retrying.get(job_id, set()) | indexes
        entries = [(unit.job_id, index, item) for unit in added for index, item in unit.items]
        planned = scoring_windows(entries, new_pending, write_batch_size, _text_length)
        windows.extend(planned)
        pacer.entries += sum(len(window) for window in planned)

    def write(rows: ResultRows, answered: list[tuple[list[Entry], Answers]]) -> Any:
        with engine.begin() as conn:
            outcomes = write_scored(conn, runner.name, runner.revision, rows, retrying)
        # After the commit, and only for rows of jobs that took them: a cache failure here
        # costs nothing but a later hit.
        reuse.remember(
            answered, {job_id for job_id, outcome in outcomes.items() if outcome.refused}
        )
        return outcomes, rows

    def taken(result: Any) -> None:
        outcomes, rows = result
        for job_id, count in rows.per_job().items():
            if outcomes[job_id].refused:
                stopped.add(job_id)
            else:
                totals[job_id].add(outcomes[job_id], count)

    def announced(position: int) -> list[str]:
        # The texts of the window at ``position``: the runner may tokenise them while the
        # windows before it are in the forward pass (engine.runners.token_prefetch). Read
        # here, on the loop's thread, after the window was merged (WindowPacer.plan_through):
        # it keeps these texts.
        return [
            item.text
            for job_id, _, item in (windows[position] if position < len(windows) else ())
            if item.error is None and item.text is not None and job_id not in stopped
        ]

    staged: list[_Staged] = []  # lookahead thread: the window started, not yet finished

    def predicted(
        window: list[Entry], usable: list[Entry], ahead: list[str], done: Future[Answers]
    ) -> None:
        # On the lookahead thread: every runner call of the loop is made from it, in order,
        # and every progress report (a progress bar counts from one thread). This window's
        # forward passes are queued before the one before is finished (its top-k), so a
        # device never waits for that; its answers go to ``done`` when a later call (the
        # next window's, or ``finished``) finishes it.
        try:
            if ahead:
                runner.prefetch(ahead)
            finish = reuse.start(usable, progress)
        except BaseException as exc:  # raised by its finish, in window order
            finish = _raising(exc)
        previous = staged.pop() if staged else None
        staged.append(_Staged(window, usable, finish, done))
        if previous is not None:
            previous.complete(progress)

    def finished() -> None:
        # On the lookahead thread: finish the window started last (no other follows it).
        if staged:
            staged.pop().complete(progress)

    def start(position: int) -> _Predicting | None:
        """Start predicting the first window from ``position`` with anything left to score
        (None: no window is left). Whether a job is still active is asked here, before its
        window is scored."""
        nonlocal stopped
        if asking and 2 * (pacer.entries - pacer.before) <= pacer.entries:
            extend()
        at = position
        while at < len(windows):
            # Merged to the pace with the windows whose texts its prediction announces;
            # cut into parts at the latest pace.
            pacer.plan_through(at + TOKENISED_AHEAD)
            pacer.cut(at)
            # A stopped job stays stopped: its later windows are dropped without asking.
            window = [entry for entry in windows[at] if entry[0] not in stopped]
            # Asked once per window, not per part of one (WindowPacer).
            if still_active is not None and window and not pacer.continues(at):
                job_ids = {job_id for job_id, _, _ in window}
                active = still_active(job_ids)
                stopped |= job_ids - active
                window = [entry for entry in window if entry[0] in active]
            if window:
                usable = [entry for entry in window if entry[2].error is None]
                ahead = announced(at + TOKENISED_AHEAD)
                answers: Future[Answers] = Future()
                lookahead.start(predicted, window, usable, ahead, answers)
                return _Predicting(at, window, usable, answers)
            at += 1
        return None

    pacer.plan_through(TOKENISED_AHEAD)
    for ahead in range(TOKENISED_AHEAD):
        if texts := announced(ahead):
            runner.prefetch(texts)
    overlap = writes_overlap(engine)
    with (
        WindowWriter(write, taken, overlap=overlap) as writer,
        Lookahead(overlap=overlap) as lookahead,
    ):
        queued: deque[_Predicting] = deque()  # started, in window order
        upcoming = 0  # the first window not started yet

        def refill() -> None:
            nonlocal upcoming
            while len(queued) < WINDOWS_IN_FLIGHT and upcoming < len(windows):
                started = start(upcoming)
                upcoming = len(windows) if started is None else started.position + 1
                if started is not None:
                    queued.append(started)

        refill()
        held = _Held()  # rows of a window's parts scored so far, not yet written
        yielding = False
        while queued:
            current = queued.popleft()
            if not queued:
                lookahead.start(finished)  # none started after it: nothing else finishes it
            answers = current.answers.result()
            pacer.scored(current.window)
            if not yielding:
                # Asked between windows and their parts (never before the first), once this
                # one is scored and before another one starts; the windows started already
                # are scored and written before the hand-back.
                more = upcoming < len(windows)
                yielding = more and should_yield is not None and should_yield()
                if not yielding:
                    refill()
            # Its rows are built while the next windows are scored, and written while the
            # one after is (one write in flight at most): a window's parts together.
            held.add(*_rows(current, answers))
            if not queued or pacer.writes(current.position):
                writer.submit(*held.take())
        if yielding:
            writer.wait()  # the rows before the hand-back are committed first
            rest = [
                entry for later in windows[upcoming:] for entry in later if entry[0] not in stopped
            ]
            if rest:
                return ScoreRun(totals, stopped, _index_ranges(rest))
    return ScoreRun(totals, stopped, {})


@dataclass(slots=True)
class _Held:
    """Rows of the parts of a window scored so far: written together, as one window."""

    rows: ResultRows = field(default_factory=ResultRows)
    # Each part's answered entries and their answers (for the result cache).
    answered: list[tuple[list[Entry], Answers]] = field(default_factory=list)

    def add(self, rows: ResultRows, answered: tuple[list[Entry], Answers]) -> None:
        self.rows.extend(rows)
        self.answered.append(answered)

    def take(self) -> tuple[ResultRows, list[tuple[list[Entry], Answers]]]:
        taken = (self.rows, self.answered)
        self.rows, self.answered = ResultRows(), []
        return taken


@dataclass(frozen=True, slots=True)
class _Staged:
    """A window whose forward passes are started (:meth:`PredictionReuse.start`)."""

    window: list[Entry]
    usable: list[Entry]
    finish: Callable[[], Answers]
    done: Future[Answers]

    def complete(self, progress: Progress | None) -> None:
        """Finish it: its answers (or the error) to ``done``."""
        try:
            answers = self.finish()
            refused = len(self.window) - len(self.usable)
            if progress is not None and refused:
                progress(refused)
        except BaseException as exc:  # the loop's thread raises it from ``done``
            self.done.set_exception(exc)
            return
        self.done.set_result(answers)


def _raising(exc: BaseException) -> Callable[[], Answers]:
    def finish() -> Answers:
        raise exc

    return finish


@dataclass(frozen=True, slots=True)
class _Predicting:
    """A write window whose answers are being computed (:class:`engine.lookahead.Lookahead`)."""

    position: int
    window: list[Entry]
    usable: list[Entry]  # ``window`` without its intake errors, in order
    answers: Future[Answers]


def _rows(
    predicting: _Predicting, answers: Answers
) -> tuple[ResultRows, tuple[list[Entry], Answers]]:
    """A window's rows (intake errors as error rows) and its answered entries."""
    window = predicting.window
    rows = ResultRows(
        [job_id for job_id, _, _ in window],
        [index for _, index, _ in window],
        [item.item_id for _, _, item in window],
    )
    if len(answers.predictions) == len(window):  # no intake error: the answers are the window's
        rows.parts.append(answers.predictions)
        rows.cached = answers.cached
    else:
        # ``usable`` is ``window`` without its intake errors, in order: walk both.
        answered = iter(range(len(answers.predictions)))
        predictions: list[Prediction] = []
        for _, _, item in window:
            if item.error is None:
                position = next(answered)
                predictions.append(answers.predictions[position])
                rows.cached.append(answers.cached[position])
            else:
                predictions.append(Prediction.failure(item.error))
                rows.cached.append(False)
        rows.parts.append(PredictionList(predictions))
    return rows, (predicting.usable, answers)


def _text_length(entry: Entry) -> int:
    text = entry[2].text
    return len(text) if text is not None else 0


def _index_ranges(entries: Sequence[tuple[str, int, InputItem]]) -> dict[str, tuple[int, int]]:
    """Per job, the smallest ``[lo, hi)`` holding every index of ``entries``."""
    ranges: dict[str, tuple[int, int]] = {}
    for job_id, index, _ in entries:
        lo, hi = ranges.get(job_id, (index, index + 1))
        ranges[job_id] = (min(lo, index), max(hi, index + 1))
    return ranges


def _without_scored(
    engine: Engine,
    work: Sequence[JobItems],
    totals: dict[str, ScoreTotals],
    progress: Progress | None,
) -> tuple[list[tuple[str, int, InputItem]], dict[str, set[int]]]:
    """Every ``(job_id, index, item)`` of ``work`` without a result row yet, in order, or
    whose error row is marked for a retry (those indexes, by job: their rows replace the
    error rows, :mod:`core.jobs.retry_marks`)."""
    ranges = [(unit.job_id, unit.items[0][0], unit.items[-1][0] + 1) for unit in work if unit.items]
    with engine.connect() as conn:
        done = scored_indexes_many(conn, ranges)
        retrying = pending_retries_many(conn, ranges)
    pending = []
    skipped = 0
    for unit in work:
        already = done.get(unit.job_id, set()) - retrying.get(unit.job_id, set())
        for index, item in unit.items:
            if index in already:
                totals[unit.job_id].skipped += 1
                skipped += 1
            else:
                pending.append((unit.job_id, index, item))
    if progress is not None and skipped:
        progress(skipped)
    return pending, retrying
