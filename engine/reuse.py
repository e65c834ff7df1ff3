"""Scoring an input once: dedup within a scoring call, and the result cache across calls.

One :class:`PredictionReuse` lives for one :func:`engine.scoring.score_jobs` call (a chunk,
or a cross-job batch of chunks of one model). For each write window it gives every usable
item a prediction, running ``runner.predict`` only on the inputs that are neither already
predicted in this call (an earlier window, another job of the batch) nor, for jobs that use
the cache, found in the result cache. Rows are still written window by window by the
caller, so cancellation checks, write windows and yields are unchanged; only the forward
pass shrinks.

The cache is an optimisation and never a reason to fail: a lookup or store that fails (the
table missing, a database error) is logged and the window is scored as if it had missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from itertools import repeat

from sqlalchemy import Engine, and_, select

from core.cache.store import input_sha256, lookup_many, store_many
from core.inputs.items import InputItem
from core.jobs.predictions import Prediction, PredictionColumns, PredictionList, as_columns
from core.tables import jobs
from engine.runners.base import Finish, Progress, Runner

log = logging.getLogger(__name__)

Entry = tuple[str, int, InputItem]  # (job_id, index, item), as score_jobs holds them
# Starts predicting inputs (engine.runners.base.Runner.start_predict): the call finishing it.
StartPredict = Callable[[Sequence[object], Progress | None], Finish]


@dataclass(frozen=True, slots=True)
class Answers:
    """A window's predictions, in entry order, and which of them came from the result
    cache (not from a forward pass of this call)."""

    predictions: PredictionColumns
    cached: list[bool]


def jobs_using_cache(engine: Engine, job_ids: Collection[str]) -> set[str]:
    """Those of ``job_ids`` that did not ask for fresh scores (``jobs.use_cache``)."""
    if not job_ids:
        return set()
    try:
        with engine.connect() as conn:
            query = select(jobs.c.id).where(and_(jobs.c.id.in_(sorted(job_ids)), jobs.c.use_cache))
            return set(conn.scalars(query))
    except Exception:
        log.warning("could not read which jobs use the result cache; not using it", exc_info=True)
        return set()


class PredictionReuse:
    """The predictions of one scoring call, by input, and the result cache behind them."""

    def __init__(
        self,
        engine: Engine,
        runner: Runner,
        predict: StartPredict,
        *,
        cache_jobs: Collection[str] = (),
        dedup: bool = True,
    ) -> None:
        self.engine = engine
        self.model = runner.name
        self.revision = runner.cache_revision
        self.predict = predict
        self.cache_jobs = frozenset(cache_jobs)
        self.dedup = dedup
        # Predicted in this call (errors too: the same input fails the same way), by input:
        # where its prediction is (the runner's columns and the row in them).
        self.fresh: dict[Hashable, tuple[PredictionColumns, int]] = {}
        # Started and not yet finished: a later window waits for them instead of predicting
        # them again (windows are finished in the order they were started).
        self.started: set[Hashable] = set()
        # Found in the result cache, by input: served only to jobs that use the cache.
        self.cached: dict[Hashable, Prediction] = {}
        self.digests: dict[Hashable, str] = {}
        self.cache_broken = False

    def start(self, usable: Sequence[Entry], progress: Progress | None) -> Callable[[], Answers]:
        """Start answering ``usable`` (items not refused at intake); the call that returns
        their answers, in order, once the windows started before are finished."""
        keys = [self._key(entry) for entry in usable]
        wants_cache = [entry[0] in self.cache_jobs for entry in usable]
        lookup = {
            key
            for key, cacheable in zip(keys, wants_cache, strict=True)
            if cacheable
            and key not in self.fresh
            and key not in self.started
            and key not in self.cached
        }
        if lookup:
            self._look_up(lookup)
        missing: dict[Hashable, object] = {}
        for key, cacheable, entry in zip(keys, wants_cache, usable, strict=True):
            known = key in self.fresh or key in self.started or (cacheable and key in self.cached)
            if not known and key not in missing:
                missing[key] = _input_of(entry[2])
        finish = self.predict(list(missing.values()), progress) if missing else None
        self.started.update(missing)

        def answers() -> Answers:
            if finish is not None:
                made = as_columns(finish())
                self.fresh.update(zip(missing, zip(repeat(made), range(len(made))), strict=True))
                self.started.difference_update(missing)
                if len(missing) == len(keys):
                    # Every input of the window predicted by this call, once each and in
                    # order (the usual case): its columns are the window's answers.
                    return Answers(made, [False] * len(keys))
            if progress is not None and len(usable) > len(missing):
                progress(len(usable) - len(missing))  # served without a forward pass
            predictions: list[Prediction] = []
            cached: list[bool] = []
            for key in keys:
                found = self.fresh.get(key)
                if found is not None:
                    columns, row = found
                    predictions.append(columns[row])
                else:
                    predictions.append(self.cached[key])
                cached.append(found is None)
            return Answers(PredictionList(predictions), cached)

        return answers

    def remember(
        self, written: Sequence[tuple[Sequence[Entry], Answers]], refused: Collection[str]
    ) -> None:
        """Store the fresh, successful predictions of written rows (entries, as their
        :class:`Answers` answered them) of jobs that use the cache and took their rows (not
        in ``refused``).

        Called after the window's write committed, in a transaction of its own.
        """
        if self.cache_broken or not self.cache_jobs:
            return  # nothing to store: no row is looked at
        new: dict[str, Prediction] = {}
        for entries, answers in written:
            for position, entry in enumerate(entries):
                job_id = entry[0]
                if answers.cached[position] or job_id not in self.cache_jobs or job_id in refused:
                    continue
                prediction = answers.predictions[position]
                if prediction.ok:
                    new[self._digest(self._key(entry), entry[2])] = prediction
        if not new:
            return
        try:
            with self.engine.begin() as conn:
                store_many(conn, self.model, self.revision, new)
        except Exception:
            self._broken("store")

    def _look_up(self, keys: Collection[Hashable]) -> None:
        if self.cache_broken:
            return
        by_digest = {self.digests[key]: key for key in keys if key in self.digests}
        try:
            with self.engine.connect() as conn:
                found = lookup_many(conn, self.model, self.revision, by_digest)
        except Exception:
            self._broken("lookup")
            return
        for digest, prediction in found.items():
            self.cached[by_digest[digest]] = prediction

    def _key(self, entry: Entry) -> Hashable:
        """What identifies an input: the text or the bytes themselves, so equal inputs
        share a key; without dedup, the item itself (every item is predicted)."""
        job_id, index, item = entry
        key: Hashable = _input_of(item) if self.dedup else (job_id, index)
        if key not in self.digests and job_id in self.cache_jobs:
            self.digests[key] = input_sha256(_input_of(item))
        return key

    def _digest(self, key: Hashable, item: InputItem) -> str:
        digest = self.digests.get(key)
        return digest if digest is not None else input_sha256(_input_of(item))

    def _broken(self, what: str) -> None:
        # Logged once per call: a missing table would otherwise log every window.
        log.warning(
            "result cache %s failed for %s; scoring without the cache for this chunk",
            what,
            self.model,
            exc_info=True,
        )
        self.cache_broken = True


def _input_of(item: InputItem) -> str | bytes:
    """What the runner gets for an item: its text, or its raw bytes for images."""
    value = item.text if item.text is not None else item.data
    assert value is not None, "an item not refused at intake has a text or bytes"
    return value
