"""Start a worker: pin the device, load and warm the models, then consume their queues.

The order is the point. The GPU is pinned before any framework import (none of the modules
imported here imports one: ``tests/unit/test_architecture.py`` checks it); every model is
loaded and warmed once, in this process, before Celery starts (so no
``worker_process_init`` timer can kill a slow load, and no task ever loads a model); and the
pool never forks after a framework is loaded (``solo``, or ``threads`` for concurrency > 1),
because CUDA cannot be re-initialised in a forked child.
"""

from __future__ import annotations

import logging
import os
import socket

from core.config import get_settings
from core.db import DbRole, set_process_role
from core.logs import configure
from core.models.catalog import load_registry
from core.models.registry import RegistryError, UnknownModelError
from core.queues import model_queue
from engine.threads import compute_threads, cores_given
from worker import warm
from worker.celery_app import app
from worker.health import HEARTBEAT
from worker.operations import add_consumer_steps
from worker.pinning import PinningError, pin_device, set_tokenizers_parallelism
from worker.tasks import score_chunk  # importing it registers the task on the app
from worker.training_task import train_model  # heads over these models train here

log = logging.getLogger("worker.main")

EXIT_USAGE = 2
EXIT_FAILURE = 1


class WorkerStartError(Exception):
    """The worker cannot start; ``exit_code`` says whether the command line was wrong."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_model_names(models: str) -> list[str]:
    """``"a, b,a"`` -> ``["a", "b"]`` (order kept, duplicates dropped)."""
    names = [name.strip() for name in models.split(",") if name.strip()]
    if not names:
        raise WorkerStartError("--models needs at least one model name", EXIT_USAGE)
    return list(dict.fromkeys(names))


def pool_for(concurrency: int) -> str:
    """``solo`` runs tasks in this very process; ``threads`` shares its warm models.

    Never ``prefork``: it forks children after the models (and CUDA) are loaded.
    """
    if concurrency < 1:
        raise WorkerStartError(f"--concurrency must be 1 or more, not {concurrency}", EXIT_USAGE)
    return "solo" if concurrency == 1 else "threads"


def configure_logging(level: str) -> None:
    # Text or JSON lines, each tagged with its job and chunk ids (core/logs.py).
    configure(level, get_settings().log_format)


def run_worker(
    gpu: int | None, models: str, concurrency: int = 1, threads: int | None = None
) -> int:
    """Run a worker until it is stopped; return its exit code.

    Raises:
        WorkerStartError: Bad options, an unknown model, or a model that failed to load;
            nothing was consumed.
    """
    try:
        pinned = pin_device(gpu)  # first: before anything below can import a framework
    except (PinningError, ValueError) as exc:
        raise WorkerStartError(str(exc), EXIT_USAGE) from exc

    settings = get_settings()
    configure_logging(settings.log_level)
    names = parse_model_names(models)
    pool = pool_for(concurrency)
    if threads is not None:
        if threads < 1:
            raise WorkerStartError(f"--threads must be 1 or more, not {threads}", EXIT_USAGE)
        settings = settings.model_copy(update={"torch_threads": threads})
    # Decided once, before any framework or tokenizer loads, and passed to every runner.
    compute = compute_threads(settings)
    settings = settings.model_copy(update={"torch_threads": compute})
    # Before any engine exists: every session of this process gets the worker's limits.
    set_process_role(DbRole.WORKER, settings)
    set_tokenizers_parallelism(threads=compute)
    log.info(
        "%d compute thread(s) per process (%d core(s) given, %d worker process(es) per host)",
        compute,
        cores_given(),
        settings.worker_processes,
    )
    if settings.chunk_lease_s >= settings.visibility_timeout_s:
        raise WorkerStartError(
            f"BULKSCORE_CHUNK_LEASE_S ({settings.chunk_lease_s}) must be shorter than "
            f"BULKSCORE_VISIBILITY_TIMEOUT_S ({settings.visibility_timeout_s}), or Redis "
            "redelivers chunks that are only waiting for a lease to run out",
            EXIT_USAGE,
        )
    try:
        registry = load_registry()
        specs = [registry.get(name) for name in names]
    except (UnknownModelError, RegistryError) as exc:
        raise WorkerStartError(str(exc), EXIT_USAGE) from exc

    HEARTBEAT.path = settings.worker_heartbeat_file
    HEARTBEAT.clear()
    log.info("worker pinned to %s; loading %s", pinned.describe(), ", ".join(names))
    try:
        warm.load_models(specs, pinned.device, settings)
    except Exception as exc:
        # Refuse to start rather than consume queues whose model is missing; a supervisor
        # restarting us sees a non-zero exit and this message, not a green healthcheck.
        log.exception("a model failed to load; this worker will not consume any queue")
        raise WorkerStartError(f"model failed to load: {exc}", EXIT_FAILURE) from exc
    tag = "cpu" if pinned.device == "cpu" else f"gpu{pinned.visible_devices}"
    return _consume(settings.log_level, tag, names, pool, concurrency)


def _consume(loglevel: str, tag: str, names: list[str], pool: str, concurrency: int) -> int:
    add_consumer_steps(app)  # health, reconciler, liveness, metrics, log context
    queues = [model_queue(name) for name in names]
    log.info(
        "serving %s and %s from %s with the %s pool",
        score_chunk.name,
        train_model.name,
        ", ".join(queues),
        pool,
    )
    celery_worker = app.Worker(
        hostname=f"bulkscore-{tag}-{os.getpid()}@{socket.gethostname()}",
        pool_cls=pool,
        concurrency=concurrency,
        queues=queues,
        loglevel=loglevel.upper(),
        # JSON logs: no banner (the queues and pool are in the "serving" log line).
        quiet=get_settings().log_format == "json",
        optimization="fair",
        # Each worker consumes its own queues; syncing revokes and clocks with every other
        # worker at start (mingle) and on every event (gossip) buys nothing here.
        without_mingle=True,
        without_gossip=True,
    )
    celery_worker.start()
    return int(celery_worker.exitcode or 0)
