"""``bulkscore compare JOB --model OTHER``: would OTHER label JOB's items the same way?

The check to run before switching a nightly schedule to a new model. The finished job's
items are read from SQL and scored in this process by OTHER as a new job (the same
batched scoring path as ``bulkscore score``, so its results stay in the results table too),
then the two jobs' labels are compared item by item.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cli.console import EXIT_USAGE, err_console, fail, out_console, print_json
from cli.in_process import score_here
from core.config import get_settings
from core.db import get_engine
from core.jobs.comparison import Comparison, Difference, compare_jobs
from core.jobs.export import SpreadsheetSafeWriter
from core.jobs.lifecycle import Job, get_job, load_items
from core.jobs.status import JobStatus
from core.models.catalog import load_registry
from core.models.registry import RegistryError, UnknownModelError
from core.models.trained import trained_table_exists
from core.training.jobs import get_training_run
from engine.in_process import create_embedded_job

TEXT_SHOWN = 70


def _model_label(job: Job) -> str:
    return job.model + (f" {job.model_revision}" if job.model_revision else "")


def run_compare(
    job_id: str,
    model: str,
    out: Path | None,
    show: int,
    device: str,
    as_json: bool = False,
) -> None:
    """The work of ``bulkscore compare`` (its options: :mod:`cli.compare_command`)."""
    settings = get_settings()
    engine = get_engine(settings.database_url)
    # A job lives in a migrated database; trained_table_exists also guards a missing file.
    job, is_training = None, False
    if trained_table_exists(settings.database_url):
        with engine.connect() as conn:
            job = get_job(conn, job_id)
            is_training = get_training_run(conn, job_id) is not None
    if job is None:
        fail(f"job {job_id} not found in the database", EXIT_USAGE)
    if is_training:
        fail(f"job {job_id} is a training job; compare a scoring job", EXIT_USAGE)
    if job.status != JobStatus.COMPLETED:
        fail(f"job {job_id} is {job.status.value}; compare a completed job", EXIT_USAGE)
    try:
        spec = load_registry(settings).get(model)
    except (UnknownModelError, RegistryError) as exc:
        fail(str(exc), EXIT_USAGE)
    if spec.input_kind.value != job.input_kind:
        fail(
            f"model {spec.name!r} scores {spec.input_kind.value}s; job {job_id} holds "
            f"{job.input_kind}s",
            EXIT_USAGE,
        )

    with engine.connect() as conn:
        inputs = [item for _, item in load_items(conn, job.id, 0, job.total)]
    other = create_embedded_job(engine, spec, inputs)
    score_here(engine, settings, spec, other, device)
    with engine.connect() as conn:
        finished = get_job(conn, other.id)
        comparison = compare_jobs(conn, job.id, other.id)
    assert finished is not None
    if as_json:
        print_json(_report_json(job, finished, comparison, show))
    else:
        _report(job, finished, comparison, show)
    if out is not None:
        _write_csv(out, job, finished, comparison.differences)
        err_console.print(f"wrote {out}", highlight=False, soft_wrap=True)


def _report(job: Job, other: Job, comparison: Comparison, show: int) -> None:
    a, b = _model_label(job), _model_label(other)
    summary = Table(show_header=False, title=f"{a} vs {b}", title_justify="left")
    summary.add_row("job", f"{job.id} ({a})")
    summary.add_row("compared with", f"{other.id} ({b})")
    summary.add_row("items compared", str(comparison.compared))
    agreement = comparison.agreement
    summary.add_row(
        "agreement",
        f"{agreement:.3f} ({comparison.agreeing} of {comparison.compared})"
        if agreement is not None
        else "-",
    )
    summary.add_row("differ", str(len(comparison.differences)))
    if comparison.errors:
        summary.add_row("not compared", f"{comparison.errors} (an error instead of a label)")
    out_console.print(summary)
    if not comparison.differences or not show:
        return
    table = Table("index", "id", "text", a, b, title="items labelled differently")
    for diff in comparison.differences[:show]:
        text = diff.text or ""
        table.add_row(
            str(diff.index),
            diff.item_id,
            text if len(text) <= TEXT_SHOWN else text[: TEXT_SHOWN - 1] + "…",
            _labelled(diff.label_a, diff.score_a),
            _labelled(diff.label_b, diff.score_b),
        )
    out_console.print(table)
    hidden = len(comparison.differences) - show
    if hidden > 0:
        err_console.print(f"... and {hidden} more (write them all with --out FILE.csv)")


def _report_json(job: Job, other: Job, comparison: Comparison, show: int) -> dict[str, Any]:
    """The report as JSON: the counts, and the first ``show`` differing items in full."""
    return {
        "job": {"id": job.id, "model": _model_label(job)},
        "compared_with": {"id": other.id, "model": _model_label(other)},
        "compared": comparison.compared,
        "agreeing": comparison.agreeing,
        "agreement": comparison.agreement,
        "differ": len(comparison.differences),
        "not_compared": comparison.errors,
        "differences": [
            {
                "index": diff.index,
                "id": diff.item_id,
                "text": diff.text,
                "label_a": diff.label_a,
                "score_a": diff.score_a,
                "label_b": diff.label_b,
                "score_b": diff.score_b,
            }
            for diff in comparison.differences[:show]
        ],
    }


def _labelled(label: str, score: float | None) -> str:
    return f"{label} ({score:.2f})" if score is not None else label


def _write_csv(path: Path, job: Job, other: Job, differences: list[Difference]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        # Ids, texts and labels from outside: no cell may run as a spreadsheet formula.
        writer = SpreadsheetSafeWriter(handle)
        writer.writerow(
            [
                "index",
                "id",
                "text",
                "label_a",
                "score_a",
                "label_b",
                "score_b",
                "model_a",
                "model_b",
            ]
        )
        a, b = _model_label(job), _model_label(other)
        for diff in differences:
            writer.writerow(
                [
                    diff.index,
                    diff.item_id,
                    diff.text or "",
                    diff.label_a,
                    diff.score_a,
                    diff.label_b,
                    diff.score_b,
                    a,
                    b,
                ]
            )
