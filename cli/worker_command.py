"""``bulkscore worker``: a Celery worker pinned to one GPU (or the CPU) with warm models."""

from __future__ import annotations

import typer

from cli.console import fail
from cli.service_logs import prepare_service_output


def worker(
    models: str = typer.Option(
        ...,
        "--models",
        "-m",
        help="Comma-separated model names to load and serve, e.g. sentiment,resnet50.",
    ),
    gpu: int | None = typer.Option(
        None,
        "--gpu",
        min=0,
        help="GPU index (as nvidia-smi numbers them) this worker uses alone; absent: CPU only.",
    ),
    concurrency: int = typer.Option(
        1,
        "--concurrency",
        "-c",
        min=1,
        help="Chunks at once: 1 runs them in this process (solo pool); more uses threads "
        "sharing the same warm models. Never forks.",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="Compute threads (torch and TensorFlow intra-op) of this worker; default "
        "BULKSCORE_TORCH_THREADS, or the cores given divided by BULKSCORE_WORKER_PROCESSES. "
        "Two workers on one machine: --threads 1 each on 2 cores, never 2 each.",
    ),
) -> None:
    """Load and warm MODELS once, then score chunks from their queues until stopped.

    Reads BULKSCORE_DATABASE_URL, BULKSCORE_BROKER_URL and BULKSCORE_MODELS. Run one worker
    per GPU: `bulkscore worker --gpu 0 --models sentiment`.
    """
    prepare_service_output()
    # Deferred: the other commands should not pay for Celery and the worker's imports.
    from worker.main import WorkerStartError, run_worker

    try:
        code = run_worker(gpu, models, concurrency=concurrency, threads=threads)
    except WorkerStartError as exc:
        fail(str(exc), exc.exit_code)
    raise typer.Exit(code)
