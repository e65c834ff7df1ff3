"""Printing a trained model's evaluation (``bulkscore train``, ``bulkscore models show``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from cli.console import out_console
from core.models.trained import TrainedModel


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def summary_table(model: TrainedModel) -> Table:
    """The model's identity, data sizes and headline scores."""
    metrics = model.metrics
    table = Table(show_header=False, title=f"{model.name} {model.revision}", title_justify="left")
    table.add_row("base", model.base)
    table.add_row("task", model.task)
    table.add_row("labels", ", ".join(model.labels))
    table.add_row("created", model.created_at.isoformat(timespec="seconds"))
    if model.job_id:
        table.add_row("training job", model.job_id)
    table.add_row(
        "examples",
        f"{metrics.get('used', '-')} used, {metrics.get('skipped', 0)} skipped; "
        f"{metrics.get('train_size', '-')} to train, {metrics.get('holdout_size', '-')} held out "
        f"(seed {metrics.get('seed', '-')})",
    )
    table.add_row(
        "held-out accuracy",
        f"{_fmt(metrics.get('accuracy'))} (always the most frequent label: "
        f"{_fmt(metrics.get('majority_baseline'))})",
    )
    table.add_row("macro F1", _fmt(metrics.get("macro_f1")))
    cv = metrics.get("cv_accuracy")
    table.add_row(
        "classifier",
        f"{metrics.get('classifier', '-')}, C={metrics.get('C', '-')}"
        + (f" (cross-validated accuracy {_fmt(cv)})" if cv is not None else ""),
    )
    for ident, reason in metrics.get("skipped_examples") or []:
        table.add_row("skipped", f"{ident}: {reason}")
    return table


def per_label_table(model: TrainedModel) -> Table:
    """Precision, recall, F1 and support of each label on the hold-out."""
    table = Table("label", "precision", "recall", "F1", "support", title="per label (held out)")
    for label, scores in (model.metrics.get("per_label") or {}).items():
        table.add_row(
            label,
            _fmt(scores.get("precision")),
            _fmt(scores.get("recall")),
            _fmt(scores.get("f1")),
            str(scores.get("support", "-")),
        )
    return table


def confusion_table(model: TrainedModel) -> Table:
    """The hold-out's confusion matrix: rows true labels, columns predicted labels."""
    labels = list(model.metrics.get("labels") or model.labels)
    table = Table("true \\ predicted", *labels, title="confusion matrix (held out)")
    for label, row in zip(labels, model.metrics.get("confusion_matrix") or [], strict=False):
        table.add_row(label, *(str(count) for count in row))
    return table


def versions_table(versions: Sequence[TrainedModel]) -> Table:
    table = Table("version", "held-out accuracy", "created", "training job", title="versions")
    for version in versions:
        table.add_row(
            version.revision,
            _fmt(version.accuracy),
            version.created_at.isoformat(timespec="seconds"),
            version.job_id or "-",
        )
    return table


def print_evaluation(model: TrainedModel, versions: Sequence[TrainedModel] = ()) -> None:
    """Everything above, on stdout."""
    out_console.print(summary_table(model))
    out_console.print(per_label_table(model))
    out_console.print(confusion_table(model))
    if len(versions) > 1:
        out_console.print(versions_table(versions))


def trained_json(model: TrainedModel, versions: Sequence[TrainedModel] = ()) -> dict[str, Any]:
    """The same as :func:`print_evaluation`, as one JSON-ready object (``--json``)."""
    return {
        "name": model.name,
        "version": model.revision,
        "base": model.base,
        "task": model.task,
        "labels": list(model.labels),
        "accuracy": model.accuracy,
        "created_at": model.created_at,
        "job_id": model.job_id,
        "evaluation": model.metrics,
        "versions": [
            {
                "version": v.revision,
                "accuracy": v.accuracy,
                "created_at": v.created_at,
                "job_id": v.job_id,
            }
            for v in versions
        ],
    }
