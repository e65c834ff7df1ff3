"""Liveness that means "consuming": a watchdog thread, and per-model heartbeats in Redis.

A Celery worker can stay connected to Redis yet stop consuming after a broker restart
(celery#9054, #8030, #10302): the process lives, the event loop may even tick, and its
queue fills up. A process-exists healthcheck stays green. So a thread, independent of the
consumer's event loop, checks every few seconds:

- the worker holds no task to run (nothing reserved: not scoring, none waiting for it), yet
- one of the queues it was started to serve holds messages, and
- that has been so, with nothing received, for ``worker_stall_s`` seconds.

Then the worker is stalled: it says so, removes its heartbeats and exits with
:data:`EXIT_STALLED`, so its supervisor (compose ``restart: unless-stopped``, systemd,
Kubernetes) starts a fresh one. Exiting is safe: a stalled worker holds no unacked message.

While it is not stalled the thread refreshes ``bulkscore:heartbeat:<model>:<hostname>``
(``core.heartbeats``) with a TTL, which ``/readyz`` reads, and counts the live heartbeats of
every model (:func:`workers_serving`): a claim of a run of chunks leaves each other worker
of its model a share of the job (``core.chunks.runs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery import bootsteps
from celery.signals import task_postrun, task_prerun, task_received, worker_shutdown

from core.config import get_settings
from core.heartbeats import (
    clear_heartbeats,
    queue_depth,
    redis_client,
    workers_by_model,
    write_heartbeats,
)
from worker import warm

log = logging.getLogger(__name__)

EXIT_STALLED = 75  # EX_TEMPFAIL: a temporary failure; restarting is the cure
MAX_CHECK_INTERVAL_S = 10.0


@dataclass
class StallClock:
    """Decides "stalled" from successive observations (a pure object, unit-tested)."""

    stall_s: float
    last_activity: float = field(default_factory=time.monotonic)
    waiting_since: float | None = None

    def activity(self, now: float | None = None) -> None:
        """A message was received or a task started or ended."""
        self.last_activity = time.monotonic() if now is None else now

    def observe(self, now: float, depth: int | None, busy: bool) -> bool:
        """Record one check (``depth`` None: Redis did not answer); True if stalled."""
        if depth is None or depth == 0 or busy:
            # Nothing to consume, busy consuming, or the broker is away (Celery reconnects
            # by itself; the clock restarts once it is back).
            self.waiting_since = None
            return False
        if self.waiting_since is None:
            self.waiting_since = now
        return now - max(self.waiting_since, self.last_activity) > self.stall_s


# Live workers per model, as the last check counted them (empty until it has).
_WORKERS: dict[str, int] = {}


def workers_serving(model: str) -> int | None:
    """How many workers have a live heartbeat for ``model``; None until a check counted."""
    return _WORKERS.get(model)


def check_interval_s(stall_s: float) -> float:
    return min(stall_s / 3, MAX_CHECK_INTERVAL_S)


def _busy() -> bool:
    from celery.worker import state

    # Reserved includes active: a task being scored, or one fetched and waiting for the pool.
    # Not a retry held for its countdown: Celery marks that one reserved only when its time
    # comes (Consumer.apply_eta_task), and meanwhile worker_disable_prefetch lets the worker
    # fetch other messages, so a worker holding one and fetching nothing is stalled too.
    return bool(state.reserved_requests)


class Watchdog:
    """The thread that checks for a stall and refreshes the heartbeats."""

    def __init__(self, hostname: str, queues: list[str], models: list[str]) -> None:
        settings = get_settings()
        self.hostname = hostname
        self.queues = queues
        self.models = models
        self.ttl_s = settings.worker_heartbeat_ttl_s
        self.clock = StallClock(float(settings.worker_stall_s))
        self.interval_s = min(check_interval_s(settings.worker_stall_s), self.ttl_s / 3)
        self.client = redis_client(settings.broker_url)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bulkscore-liveness", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(Exception):  # the TTL removes them anyway
            clear_heartbeats(self.client, self.models, self.hostname)

    def check(self) -> bool:
        """One check; True if the worker is stalled."""
        try:
            depth: int | None = sum(queue_depth(self.client, queue) for queue in self.queues)
        except Exception:
            depth = None
        stalled = self.clock.observe(time.monotonic(), depth, _busy())
        if not stalled and depth is not None:
            try:
                detail = {"pid": os.getpid(), "queues": self.queues}
                write_heartbeats(self.client, self.models, self.hostname, self.ttl_s, detail)
                counted = workers_by_model(self.client)
                _WORKERS.clear()
                _WORKERS.update(counted)
            except Exception:
                log.debug("could not write the worker heartbeat", exc_info=True)
        return stalled

    def _run(self) -> None:
        # The first check at once: the heartbeats (and the count of the model's workers)
        # from the start, not one interval later.
        while True:
            if self.check():
                self._exit_stalled()
            if self.stopped.wait(self.interval_s):
                return

    def _exit_stalled(self) -> None:
        log.error(
            "worker %s is connected but not consuming: %s hold messages and it has received "
            "none for %.0fs; exiting (%d) so that its supervisor restarts it",
            self.hostname,
            ", ".join(self.queues),
            self.clock.stall_s,
            EXIT_STALLED,
        )
        self.stop()
        for handler in logging.getLogger().handlers:
            handler.flush()
        # os._exit, not sys.exit: this is not the main thread, and a wedged consumer must
        # not get a say. Nothing is lost: the worker holds no message (it is idle).
        os._exit(EXIT_STALLED)


WATCHDOG: list[Watchdog] = []


@task_received.connect
def _on_received(**_kwargs: Any) -> None:
    if WATCHDOG:
        WATCHDOG[0].clock.activity()


@task_prerun.connect
def _on_prerun(**_kwargs: Any) -> None:
    if WATCHDOG:
        WATCHDOG[0].clock.activity()


@task_postrun.connect
def _on_postrun(**_kwargs: Any) -> None:
    if WATCHDOG:
        WATCHDOG[0].clock.activity()


@worker_shutdown.connect
def _on_shutdown(**_kwargs: Any) -> None:
    if WATCHDOG:
        WATCHDOG.pop().stop()


class LivenessStep(bootsteps.StartStopStep):
    """Starts the watchdog once the task consumer runs (once per process)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        if WATCHDOG:
            # The consumer restarts its steps after a lost connection: the same watchdog
            # (and the same queues, those the worker was started with) carry on.
            WATCHDOG[0].clock.activity()
            return
        queues = sorted(queue.name for queue in c.app.amqp.queues.consume_from.values())
        watchdog = Watchdog(c.hostname, queues, warm.loaded_models())
        WATCHDOG.append(watchdog)
        watchdog.start()
        log.info(
            "liveness: exits %d if idle for %ss while %s hold messages; heartbeat every %.0fs",
            EXIT_STALLED,
            get_settings().worker_stall_s,
            ", ".join(queues),
            watchdog.interval_s,
        )
