"""Worker liveness that means "consuming", not "the process exists".

A consumer bootstep starts once the task consumer is up, logs that the worker consumes its
queues (tests and operators wait for that line), and touches a heartbeat file from the
consumer's own event-loop timer. Chunk progress touches it too, because the ``solo`` pool
runs a task inside that loop. A container healthcheck that requires a fresh file therefore
fails when the loop is wedged (a Redis restart can leave a connected worker that no longer
consumes: celery#9054), not merely when the process has died.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 15.0
CONSUMING_MESSAGE = "worker %s consuming %s"


class Heartbeat:
    """Touches a file, at most once a second (cheap enough to call on every batch)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._last = float("-inf")

    def touch(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._last < 1.0:
            return
        self._last = now
        try:
            self.path.touch()
        except OSError:
            log.exception("cannot touch heartbeat file %s", self.path)

    def clear(self) -> None:
        """Remove the file, so a stale one from a previous run never looks healthy."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


HEARTBEAT = Heartbeat(None)


class ConsumingStep(bootsteps.StartStopStep):
    """Runs once the task consumer has started: logs it and keeps the heartbeat fresh."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.timer_entry: Any = None

    def start(self, c: Any) -> None:
        queues = ", ".join(sorted(queue.name for queue in c.app.amqp.queues.consume_from.values()))
        log.info(CONSUMING_MESSAGE, c.hostname, queues)
        HEARTBEAT.touch()
        self.timer_entry = c.timer.call_repeatedly(HEARTBEAT_INTERVAL_S, HEARTBEAT.touch)

    def stop(self, c: Any) -> None:
        # The consumer restarts its steps after a lost connection; one timer per start.
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
