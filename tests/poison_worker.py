"""``bulkscore`` with one test-only fault: the text ``POISON`` kills the worker that scores it.

A stand-in for a native crash on one input (a segfault in a tokenizer, an allocation the
OOM killer ends): the process dies with SIGKILL inside ``predict`` (or ``start_predict``),
with no exception, no ``finally`` and no ack. Production code is untouched: this launcher
wraps the warm runner's two entry points before handing over to the real command line.
Every other input scores as usual, so the fault tests run all their workers through it.

Usage: ``python tests/poison_worker.py worker --models tiny``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

POISON = "POISON"


def main() -> None:
    # worker.warm imports no ML framework, so the GPU pinning in `bulkscore worker` still
    # happens before any.
    from worker import warm

    original = warm.SerializedRunner.predict
    original_start = warm.SerializedRunner.start_predict

    def die_on_poison(batch: Sequence[Any]) -> None:
        if any(item == POISON for item in batch):
            os.kill(os.getpid(), signal.SIGKILL)

    def predict(self: Any, batch: Sequence[Any], progress: Any = None) -> Any:
        die_on_poison(batch)
        return original(self, batch, progress)

    def start_predict(self: Any, batch: Sequence[Any], progress: Any = None) -> Any:
        # The scoring loop reaches the model through start_predict (a window's forward
        # passes queued before the window before is finished): the crash comes there.
        die_on_poison(batch)
        return original_start(self, batch, progress)

    warm.SerializedRunner.predict = predict  # type: ignore[method-assign]
    warm.SerializedRunner.start_predict = start_predict  # type: ignore[method-assign]
    from cli.main import app

    app(prog_name="bulkscore")


if __name__ == "__main__":
    main()
