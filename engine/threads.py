"""How many compute threads a worker process runs, and telling each framework so.

Oversubscribed threads are catastrophic on CPU (triton-inference-server#6896): two workers
on a 2-core machine that each let torch start 2 intra-op threads run 4 busy threads on 2
cores and spin against each other. So a process takes ``torch_threads`` when set (``bulkscore
worker --threads N``), else the cores it is given (its CPU affinity, capped by a cgroup CPU
quota such as ``docker run --cpus``) divided by ``worker_processes``, the number of workers
the operator runs side by side. The runners call :func:`configure_torch_threads` and
:func:`configure_tensorflow_threads` in ``setup``, before their first operation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any

from core.config import Settings

log = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> int | None:
    """Whole cores a cgroup v2 CPU quota allows (``docker --cpus 1.5`` -> 2), None if none."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def cores_given() -> int:
    """The cores this process may use: its affinity mask, capped by a cgroup quota.

    ``os.cpu_count()`` reports the host's cores even inside a container limited to one,
    which is exactly how frameworks end up oversubscribed.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)


def compute_threads(settings: Settings, cores: int | None = None) -> int:
    """Intra-op threads for one worker process (see the module docstring)."""
    if settings.torch_threads:
        return settings.torch_threads
    available = cores_given() if cores is None else cores
    return max(1, available // settings.worker_processes)


def configure_torch_threads(torch: Any, settings: Settings) -> int:
    """Give torch :func:`compute_threads` intra-op threads and one inter-op thread.

    Inference runs one operator at a time, so an inter-op pool would only add threads that
    compete with the intra-op ones. torch accepts the inter-op count only before its first
    parallel work, so a second runner in the same process keeps the first one's setting.
    """
    threads = compute_threads(settings)
    torch.set_num_threads(threads)
    # Raises once parallel work has started: an earlier runner of this process set it.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return threads


def configure_tensorflow_threads(tf: Any, settings: Settings) -> int:
    """Give TensorFlow :func:`compute_threads` intra-op threads and one inter-op thread.

    For the Keras runner: ``configure_tensorflow_threads(tf, self.settings)`` first thing in
    ``setup``. Returns the intra-op threads TensorFlow runs with.

    Call right after ``import tensorflow`` and before any model is built: TensorFlow fixes
    its thread pools when its runtime starts and raises afterwards, which is logged and
    ignored here (the process keeps whatever it started with).
    """
    threads = compute_threads(settings)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as exc:
        log.warning("TensorFlow threads already fixed (%s); keeping them", exc)
        getter = getattr(tf.config.threading, "get_intra_op_parallelism_threads", None)
        return int(getter() or threads) if getter else threads
    return threads
