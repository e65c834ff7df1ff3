"""Real worker processes for integration tests: start, wait for a log line, stop.

A worker runs as ``bulkscore worker`` in a subprocess with its output in a log file, so a
test can wait for what the worker says ("consuming", "chunk 3 of job X done by ...") and
every process is terminated and reaped by the fixture that started it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from celery import Celery

from api.dispatch import producer_app
from core.config import Settings

BULKSCORE = str(Path(sys.executable).with_name("bulkscore"))
STARTUP_TIMEOUT_S = 60.0
T = TypeVar("T")


def worker_env(
    database_url: str, broker_url: str, models_file: Path, **extra: str
) -> dict[str, str]:
    """The environment of a worker subprocess: this one's, plus the service settings."""
    # Without what a worker decides for itself: an in-process `bulkscore score` earlier in
    # the test run sets TOKENIZERS_PARALLELISM in this process (worker.pinning), and a worker
    # keeps a value it inherits.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BULKSCORE_", "CUDA_", "TOKENIZERS_PARALLELISM"))
    }
    env.update(
        BULKSCORE_DATABASE_URL=database_url,
        BULKSCORE_BROKER_URL=broker_url,
        BULKSCORE_MODELS=str(models_file),
        BULKSCORE_LOG_LEVEL="INFO",
        BULKSCORE_TORCH_THREADS="1",  # two cores shared by everything on the test machine
        **extra,
    )
    return env


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(
        self, pattern: str, timeout: float = STARTUP_TIMEOUT_S, count: int = 1
    ) -> list[str]:
        """Wait until the log matches ``pattern`` ``count`` times; fail if the worker exits."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.findall(self.log)
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                code = self.process.returncode
                tail = self.log[-4000:]
                raise AssertionError(f"worker exited ({code}) before {pattern!r}:\n{tail}")
            if time.monotonic() > deadline:
                tail = self.log[-4000:]
                raise AssertionError(f"no {pattern!r} x{count} in {timeout}s:\n{tail}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (Celery's warm shutdown), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


def start_worker(args: list[str], env: Mapping[str, str], log_path: Path) -> WorkerProcess:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [BULKSCORE, "worker", *args], env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
    return WorkerProcess(process, log_path)


@contextmanager
def running_worker(
    args: list[str], env: Mapping[str, str], log_path: Path
) -> Iterator[WorkerProcess]:
    """A worker that consumes its queues for the duration of the block."""
    worker = start_worker(args, env, log_path)
    try:
        worker.wait_for(r"worker \S+ consuming")
        yield worker
    finally:
        worker.stop()


def run_worker_to_exit(
    args: list[str], env: Mapping[str, str], log_path: Path, timeout: float = 60
) -> tuple[int, str]:
    """Run a worker expected to exit by itself; its exit code and output."""
    worker = start_worker(args, env, log_path)
    try:
        code = worker.process.wait(timeout)
    finally:
        worker.stop()
    return code, worker.log


def producer(broker_url: str) -> Celery:
    """A producer-only Celery app with the shared settings (what the API does)."""
    return producer_app(Settings(broker_url=broker_url), "bulkscore-test-producer")


def poll(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
