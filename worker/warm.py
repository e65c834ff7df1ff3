"""The models this worker process has loaded and warmed, by name.

Filled once by :func:`load_models` at worker start (never at import, never per task) and
read by the chunk task. A process holds each model once, however many tasks it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from core.config import Settings
from core.jobs.predictions import Prediction
from core.models.registry import ModelSpec
from engine.runners import build_runner
from engine.runners.base import Finish, Progress, Runner, start_predicting

log = logging.getLogger(__name__)


class SerializedRunner(Runner):
    """A runner whose ``predict`` runs one call at a time.

    With the ``threads`` pool several tasks share one warm runner; a fast tokenizer raises
    "Already borrowed" when two threads use it at once, and two forward passes on one GPU
    only contend. The lock is uncontended with the ``solo`` pool.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.name = runner.name
        self.revision = runner.revision
        self._lock = threading.Lock()

    def setup(self, device: str = "cpu") -> None:
        self.runner.setup(device)
        self.max_batch_size = self.runner.max_batch_size

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        with self._lock:
            return self.runner.predict(batch, progress=progress)

    def start_predict(self, batch: Sequence[Any], progress: Progress | None = None) -> Finish:
        # Each step under the lock, not the time between: the chunk's next window is
        # started between them (engine.scoring), on this runner, from the same thread.
        with self._lock:
            finish = start_predicting(self.runner, batch, progress)

        def finished() -> Sequence[Prediction]:
            with self._lock:
                return finish()

        return finished

    def prefetch(self, batch: Sequence[Any]) -> None:
        # Outside the lock: preparing the next window overlaps the current forward pass;
        # the runner keeps its tokenizer to one thread itself.
        self.runner.prefetch(batch)

    @contextmanager
    def exclusive(self) -> Iterator[Runner]:
        """The wrapped runner, held alone: for calls other than ``predict`` (a backbone's
        features for a training task) that must not overlap a chunk's forward passes."""
        with self._lock:
            yield self.runner


_RUNNERS: dict[str, SerializedRunner] = {}
_DEVICE: list[str] = ["cpu"]  # the device load_models put the models on


def load_models(specs: Iterable[ModelSpec], device: str, settings: Settings) -> list[str]:
    """Build, load and warm a runner for each spec on ``device``; return their names.

    ``Runner.setup`` loads the weights and runs one warm-up batch, so the first chunk does
    not pay for lazy initialisation. Any failure propagates: a worker that cannot hold one
    of its models must not start consuming (see ``worker.main``).
    """
    _DEVICE[0] = device
    names = []
    for spec in specs:
        started = time.perf_counter()
        runner = SerializedRunner(build_runner(spec, settings))
        runner.setup(device)
        _RUNNERS[spec.name] = runner
        names.append(spec.name)
        log.info(
            "model %s (%s) loaded and warmed on %s in %.1fs",
            spec.name,
            spec.source,
            device,
            time.perf_counter() - started,
        )
    return names


def get_runner(name: str) -> Runner | None:
    """The warm runner for model ``name``, or None if this process did not load it."""
    return _RUNNERS.get(name)


def device() -> str:
    """The device this process's models run on (training tasks load backbones there)."""
    return _DEVICE[0]


def loaded_models() -> list[str]:
    return sorted(_RUNNERS)


def clear() -> None:
    """Forget every runner (tests)."""
    _RUNNERS.clear()
