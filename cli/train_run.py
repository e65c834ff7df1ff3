"""``bulkscore train``: train a classifier on a base model's frozen features, in-process.

The embedded counterpart of ``POST /v1/models``: the same readers, the same training and
registration code (``engine.trainer``), reached the same way (its job's one chunk claimed,
leased and finished by :func:`engine.chunk_work.work_on_chunk`), on the configured database;
the model is usable by name at once (jobs, ``bulkscore score``, schedules; workers load it
when they start).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cli.console import EXIT_USAGE, err_console, fail, print_json
from cli.evaluation_view import print_evaluation, trained_json
from core.config import get_settings
from core.db import get_engine
from core.jobs.status import JobDriver
from core.migrate import upgrade
from core.models.catalog import load_registry
from core.models.registry import InputKind, RegistryError
from core.models.trained import (
    NameTakenError,
    TrainedModelError,
    check_base,
    check_new_name,
    may_train,
)
from core.training.data import (
    DataFormat,
    DataLimits,
    TrainingDataError,
    check_examples,
    read_local_data,
)
from core.training.jobs import (
    TRAINING_CHUNK,
    create_training_job,
    fail_training_job,
)
from engine.chunk_work import work_on_chunk
from engine.delivery import ChunkAttemptError, ChunkOutcome, Driver
from engine.runners.base import ModelLoadError
from engine.runners.head_runner import build_backbone


def run_train(
    name: str,
    base: str,
    data: Path,
    holdout: float,
    seed: int,
    device: str,
    as_json: bool = False,
) -> None:
    """The work of ``bulkscore train`` (its options: :mod:`cli.train_command`)."""
    settings = get_settings()
    try:
        registry = load_registry(settings)
        check_new_name(registry, name)
        base_spec = check_base(registry, base)
        examples = read_local_data(data, base_spec.input_kind, DataLimits.from_settings(settings))
        counts = check_examples(examples)
    except (RegistryError, TrainedModelError, TrainingDataError) as exc:
        fail(str(exc), EXIT_USAGE)
    if base_spec.input_kind == InputKind.TEXT:
        data_format = DataFormat.CSV
    else:
        data_format = DataFormat.ZIP if data.suffix.lower() == ".zip" else DataFormat.FOLDER
    err_console.print(
        f"{len(examples.usable)} examples of {len(counts)} labels"
        + (f" ({len(examples.skipped)} files skipped)" if examples.skipped else ""),
        highlight=False,
    )

    upgrade(settings.database_url)
    engine = get_engine(settings.database_url)
    with engine.begin() as conn:
        if not may_train(conn, name, None):
            fail(str(NameTakenError(name)), EXIT_USAGE)
        job = create_training_job(
            conn,
            name=name,
            base=base_spec,
            total=len(examples.items),
            data_format=data_format,
            data=None,
            holdout_fraction=holdout,
            seed=seed,
            driver=JobDriver.EMBEDDED,
        )

    backbone = build_backbone(base_spec, settings)
    err_console.print(
        f"loading base [bold]{base_spec.name}[/] ({base_spec.source}) on {device} ..."
    )
    try:
        backbone.setup(device)
    except ModelLoadError as exc:
        with engine.begin() as conn:
            fail_training_job(conn, job.id, str(exc))
        fail(str(exc))
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]features[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
    ) as bar:
        task = bar.add_task("features", total=len(examples.usable))
        # The job's chunk is claimed, leased and finished here as a worker would, so no
        # chunk is left queued and the service never touches it. One attempt: a crash
        # fails the job with its reason (there is no `--job-id` to resume a training).
        driver = Driver(
            runner_for=lambda _model: backbone,
            kind=JobDriver.EMBEDDED,
            progress=lambda count: bar.update(task, advance=count),
            max_attempts=1,
            cross_job=False,
            backbone_for=lambda _base: nullcontext(backbone),
            training_examples=lambda _run: examples,
        )
        try:
            report = work_on_chunk(engine, settings, job.id, TRAINING_CHUNK, driver)
        except ChunkAttemptError as exc:
            fail(f"training job {job.id} failed: {exc}")
    if report.outcome == ChunkOutcome.FAILED:
        fail(report.reason, EXIT_USAGE)
    model = report.trained
    if model is None:
        fail(f"training job {job.id}: {report.reason or report.outcome.value}; nothing registered")
    err_console.print(
        f"trained {model.name} {model.revision} in {time.perf_counter() - started:.1f}s "
        f"(training job {job.id}); score with: bulkscore score FILE --model {model.name}",
        highlight=False,
        soft_wrap=True,
    )
    if as_json:
        print_json(trained_json(model))
    else:
        print_evaluation(model)
