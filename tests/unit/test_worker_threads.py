"""Compute threads per worker process: cores given, split between workers, told to frameworks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.config import Settings
from engine import threads
from engine.threads import (
    cgroup_cpu_limit,
    compute_threads,
    configure_tensorflow_threads,
    configure_torch_threads,
)


def settings(**values: Any) -> Settings:
    return Settings(database_url="sqlite://", **values)


def test_workers_on_one_machine_split_its_cores() -> None:
    assert compute_threads(settings(), cores=8) == 8
    assert compute_threads(settings(worker_processes=2), cores=8) == 4
    assert compute_threads(settings(worker_processes=3), cores=2) == 1, "never zero"
    assert compute_threads(settings(torch_threads=3, worker_processes=2), cores=8) == 3


def test_a_cgroup_quota_caps_the_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert cgroup_cpu_limit(quota) == 2
    quota.write_text("max 100000\n")
    assert cgroup_cpu_limit(quota) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None

    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 1)
    assert threads.cores_given() == 1
    assert compute_threads(settings()) == 1


class FakeTorch:
    def __init__(self, interop_started: bool) -> None:
        self.interop_started = interop_started
        self.intra: int | None = None
        self.interop: int | None = None

    def set_num_threads(self, count: int) -> None:
        self.intra = count

    def set_num_interop_threads(self, count: int) -> None:
        if self.interop_started:
            raise RuntimeError("cannot set number of interop threads after parallel work")
        self.interop = count


def test_torch_gets_the_threads_and_one_inter_op_thread() -> None:
    fresh = FakeTorch(interop_started=False)
    assert configure_torch_threads(fresh, settings(torch_threads=2)) == 2
    assert (fresh.intra, fresh.interop) == (2, 1)
    started = FakeTorch(interop_started=True)
    assert configure_torch_threads(started, settings(torch_threads=1)) == 1
    assert (started.intra, started.interop) == (1, None)


def test_tensorflow_gets_the_threads_unless_its_runtime_already_started() -> None:
    calls: dict[str, int] = {}

    def record(name: str) -> Any:
        return lambda count: calls.__setitem__(name, count)

    tf = SimpleNamespace(
        config=SimpleNamespace(
            threading=SimpleNamespace(
                set_intra_op_parallelism_threads=record("intra"),
                set_inter_op_parallelism_threads=record("inter"),
            )
        )
    )
    assert configure_tensorflow_threads(tf, settings(torch_threads=2)) == 2
    assert calls == {"intra": 2, "inter": 1}

    def too_late(_count: int) -> None:
        raise RuntimeError("Intra op parallelism cannot be modified after initialization.")

    tf.config.threading.set_intra_op_parallelism_threads = too_late
    assert configure_tensorflow_threads(tf, settings(torch_threads=1)) == 1
