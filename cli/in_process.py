"""What ``bulkscore score`` and ``bulkscore compare`` share: load a model, score a job here.

Importing this module imports no ML framework (``engine.runners`` loads a backend only when
a model needs it), so ``bulkscore --help`` and the client commands start fast.
"""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import Engine

from cli.console import err_console, fail
from core.config import Settings
from core.jobs.lifecycle import Job, mark_failed
from core.models.registry import ModelSpec
from engine.in_process import InProcessRun, score_in_process
from engine.runners import ModelLoadError, build_runner
from engine.threads import compute_threads
from worker.pinning import set_tokenizers_parallelism


def score_here(
    engine: Engine, settings: Settings, spec: ModelSpec, job: Job, device: str
) -> tuple[InProcessRun, float]:
    """Load ``spec`` on ``device`` and score ``job`` with a progress bar; (run, seconds).

    A model that cannot be loaded fails the job with the reason and exits with status 1;
    another process holding the job exits with status 1 saying so.
    """
    # Decided as a worker decides it (worker.pinning), before a tokenizer loads: the Rust
    # tokenizer's pool as wide as this process's cores, not the library's default of every
    # core of the host (more than a container limited by a CPU quota may use).
    set_tokenizers_parallelism(threads=compute_threads(settings))
    runner = build_runner(spec, settings)
    err_console.print(f"loading model [bold]{spec.name}[/] ({spec.source}) on {device} ...")
    try:
        runner.setup(device)
    except ModelLoadError as exc:
        with engine.begin() as conn:
            mark_failed(conn, job.id, str(exc))
        fail(str(exc))
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]scoring[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task("score", total=job.total, rate="")

        def advance(count: int) -> None:
            elapsed = time.perf_counter() - started
            done = bar.tasks[0].completed + count
            bar.update(task, advance=count, rate=f"{done / elapsed:.1f} items/s" if elapsed else "")

        run = score_in_process(engine, settings, job.id, runner, progress=advance)
    if run.busy is not None:
        fail(
            f"job {job.id} is being scored by another process (its lease runs out in "
            f"{run.busy.retry_in_s:.0f}s); try again then"
        )
    return run, time.perf_counter() - started
