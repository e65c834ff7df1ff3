"""A supervisor for worker processes, as compose's ``restart: unless-stopped`` is one.

It keeps a number of ``bulkscore worker`` processes running: whichever exits, for any
reason, is started again (a fresh process with a fresh log file), and every exit code is
recorded, so a test can kill, stop or wedge workers and check what the service did.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from worker_support import WorkerProcess

POISON_LAUNCHER = str(Path(__file__).resolve().parent / "poison_worker.py")


class Supervisor:
    """Keeps ``count`` workers alive; restarts any that exits until :meth:`stop`."""

    def __init__(
        self,
        args: list[str],
        env_for: Callable[[int], Mapping[str, str]],
        log_dir: Path,
        count: int = 2,
    ) -> None:
        self.args = args
        self.env_for = env_for
        self.log_dir = log_dir
        self.count = count
        self.workers: list[WorkerProcess] = []
        self.logs: list[Path] = []  # every log file, oldest first
        self.exits: list[tuple[int, int]] = []  # (slot, exit code) of every exit seen
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def _launch(self, slot: int) -> WorkerProcess:
        log_path = self.log_dir / f"worker-{slot}-{len(self.logs)}.log"
        self.logs.append(log_path)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, POISON_LAUNCHER, "worker", *self.args],
                env=dict(self.env_for(slot)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return WorkerProcess(process, log_path)

    def start(self) -> None:
        with self._lock:
            self.workers = [self._launch(slot) for slot in range(self.count)]
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                for slot, worker in enumerate(self.workers):
                    code = worker.process.poll()
                    if code is not None and not self._stopping.is_set():
                        self.exits.append((slot, code))
                        self.workers[slot] = self._launch(slot)

    def wait_consuming(self, timeout: float = 90.0) -> None:
        """Until every current worker says it consumes (restarted ones included)."""
        deadline = time.monotonic() + timeout
        for slot in range(self.count):
            while True:
                with self._lock:
                    worker = self.workers[slot]
                try:
                    worker.wait_for(
                        r"worker \S+ consuming", timeout=max(1.0, deadline - time.monotonic())
                    )
                    break
                except AssertionError:
                    with self._lock:
                        replaced = self.workers[slot] is not worker
                    if not replaced or time.monotonic() > deadline:
                        raise

    def signal(self, sig: signal.Signals, slot: int | None = None) -> list[int]:
        """Send ``sig`` to one worker (or all); their pids."""
        with self._lock:
            targets = self.workers if slot is None else [self.workers[slot]]
            for worker in targets:
                if worker.process.poll() is None:
                    worker.process.send_signal(sig)
            return [worker.process.pid for worker in targets]

    def wait_exits(self, since: int, count: int, timeout: float = 60.0) -> list[tuple[int, int]]:
        """The exits seen after the first ``since``, once there are at least ``count`` of
        them (or the timeout passes): a warm shutdown exits a moment after its last task,
        which may be after the job it worked on is final."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen = self.exits[since:]
            if len(seen) >= count or time.monotonic() > deadline:
                return seen
            time.sleep(0.1)

    def pids(self) -> list[int]:
        with self._lock:
            return [worker.process.pid for worker in self.workers]

    def log_text(self) -> str:
        """Every worker log so far, concatenated."""
        return "".join(path.read_text(errors="replace") for path in self.logs if path.exists())

    def stop(self) -> None:
        """Stop supervising and end every worker (SIGCONT first: a stopped one cannot exit)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with self._lock:
            for worker in self.workers:
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGCONT)
                    worker.process.send_signal(signal.SIGTERM)
            for worker in self.workers:
                try:
                    worker.process.wait(15)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait(5)
