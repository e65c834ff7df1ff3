"""Trained models in SQL: versioned heads over a backbone from the models file.

``bulkscore train`` (and ``POST /v1/models``) fit a small linear head on a frozen backbone's
features and register it here as ``(name, version)``. The head's bytes (a safetensors file)
live in the row, so every worker can load it without a shared disk; re-training a name adds
the next version. A trained name resolves like a models-file name everywhere (jobs, the API,
``bulkscore score``, schedules) through :class:`SqlTrainedModels`, to a :class:`TrainedSpec`
of its latest version. No ML library here: the head stays bytes until a worker reads it.

A trained name belongs to whoever registered its first version: an API key, or the operator
(``bulkscore train``, owner NULL). Only that owner registers more versions
(:func:`register_trained_model` refuses anyone else, in the registering transaction), and an
API key sees, and scores with, only its own trained models and the operator's: every read
here takes ``visible_to`` (a key id; None: unscoped, for the operator and the workers), so
another key's model reads exactly as one that does not exist.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field
from sqlalchemy import ColumnElement, Connection, func, insert, inspect, or_, select
from sqlalchemy.engine import make_url

from core.clock import utcnow
from core.db import get_engine
from core.models.registry import (
    IMAGE_BACKENDS,
    NAME_PATTERN,
    Backend,
    InputKind,
    ModelSpec,
    Registry,
    RegistryError,
    Task,
)
from core.tables import trained_models


class TrainedModelError(ValueError):
    """A training request names an unusable model name or base; the message says why."""


class NameTakenError(TrainedModelError):
    """The trained name belongs to another owner: only its owner registers versions."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the model name {name!r} belongs to another API key (whoever trained its first "
            "version); choose another name"
        )
        self.name = name


class TrainedSpec(ModelSpec):
    """A trained model's spec: its base's spec, its version, labels and head bytes.

    ``source`` is the base's source (so listings show what it is built on) and ``revision``
    is the version label ("v2"), which jobs and results record as ``model_revision``.
    """

    base_spec: ModelSpec
    version: int
    labels: tuple[str, ...]
    head_bytes: bytes = Field(repr=False)  # a few KB of floats: keep it out of logs


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """One row of ``trained_models``; ``head`` is None where a listing left it out."""

    id: int
    name: str
    version: int
    base: str
    task: str
    input_kind: str
    labels: list[str]
    metrics: dict[str, Any]
    head_sha256: str
    job_id: str | None
    created_at: datetime
    head: bytes | None = None
    owner_key_id: int | None = None  # None: the operator's (bulkscore train)

    @property
    def revision(self) -> str:
        return version_label(self.version)

    @property
    def accuracy(self) -> float | None:
        value = self.metrics.get("accuracy")
        return float(value) if isinstance(value, int | float) else None


def version_label(version: int) -> str:
    """What ``model_revision`` records for a version: ``2`` -> ``"v2"``."""
    return f"v{version}"


_LISTED = [c for c in trained_models.c if c.name != "head"]


def name_owner(conn: Connection, name: str) -> tuple[bool, int | None]:
    """Whether ``name`` has a version, and its owner: the first version's (None: operator)."""
    row = conn.execute(
        select(trained_models.c.owner_key_id)
        .where(trained_models.c.name == name)
        .order_by(trained_models.c.version)
        .limit(1)
    ).first()
    return (row is not None, row.owner_key_id if row is not None else None)


def may_train(conn: Connection, name: str, owner_key_id: int | None) -> bool:
    """Whether ``owner_key_id`` (None: the operator) may register a version of ``name``."""
    exists, owner = name_owner(conn, name)
    return not exists or owner == owner_key_id


def _visible(visible_to: int | None) -> ColumnElement[bool] | None:
    """The rows of names that key ``visible_to`` may see: its own and the operator's.

    By the owner of each name's first version, so a version some other key registered
    before names had owners cannot make the name visible to it (or hide it from its owner).
    """
    if visible_to is None:
        return None
    first = trained_models.alias("first_version")
    owner = (
        select(first.c.owner_key_id)
        .where(first.c.name == trained_models.c.name)
        .order_by(first.c.version)
        .limit(1)
        .scalar_subquery()
    )
    return or_(owner.is_(None), owner == visible_to)


def _from_row(row: Any) -> TrainedModel:
    return TrainedModel(**dict(row._mapping))


def task_for(base: ModelSpec) -> Task:
    """The task of a model trained on ``base``: classification of the base's input kind."""
    if base.input_kind == InputKind.IMAGE:
        return Task.IMAGE_CLASSIFICATION
    return Task.TEXT_CLASSIFICATION


def check_base(registry: Registry, base: str) -> ModelSpec:
    """The models-file model ``base`` if it can serve as a frozen feature extractor.

    Raises:
        TrainedModelError: ``base`` is not in the models file (trained models are not bases:
            train on their base instead), or its backend cannot give features.
    """
    spec = registry.models.get(base)
    if spec is None:
        raise TrainedModelError(
            f"unknown base model {base!r}; a base is a model of the models file: "
            f"{', '.join(registry.names) or '(none)'}"
        )
    text_encoder = spec.backend == Backend.TRANSFORMERS and spec.input_kind == InputKind.TEXT
    if not (text_encoder or spec.backend in IMAGE_BACKENDS):
        raise TrainedModelError(
            f"base model {base!r} ({spec.backend.value}, {spec.input_kind.value}) cannot be "
            "used as a backbone: use a transformers text model (e.g. minilm) or a Keras or "
            "EfficientNet-Lite image model (e.g. imagenet-lite, resnet50)"
        )
    return spec


def check_new_name(registry: Registry, name: str) -> str:
    """``name`` if a model may be trained under it (a new name, or a trained one's).

    Raises:
        TrainedModelError: The name is malformed or belongs to a models-file model.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise TrainedModelError(
            f"model name {name!r}: use lower-case letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit)"
        )
    if name in registry.models:
        raise TrainedModelError(
            f"{name!r} is a model of the models file; choose another name for the trained model"
        )
    return name


def register_trained_model(
    conn: Connection,
    *,
    name: str,
    base: ModelSpec,
    labels: Sequence[str],
    metrics: dict[str, Any],
    head: bytes,
    job_id: str | None,
    owner_key_id: int | None = None,
) -> TrainedModel:
    """Insert the next version of ``name`` for ``owner_key_id`` (None: the operator) in the
    caller's transaction and return it.

    Two trainings of one name racing for the same version: the loser's insert fails on the
    ``(name, version)`` key and its transaction rolls back; the caller retries, and then
    meets the winner's version (and, if the winner was another owner, this refusal).

    Raises:
        NameTakenError: ``name`` belongs to another owner.
    """
    if not may_train(conn, name, owner_key_id):
        raise NameTakenError(name)
    version = (
        conn.scalar(select(func.max(trained_models.c.version)).where(trained_models.c.name == name))
        or 0
    ) + 1
    model = TrainedModel(
        id=0,
        name=name,
        version=version,
        base=base.name,
        task=task_for(base).value,
        input_kind=base.input_kind.value,
        labels=list(labels),
        metrics=metrics,
        head_sha256=hashlib.sha256(head).hexdigest(),
        job_id=job_id,
        created_at=utcnow(),
        head=head,
        owner_key_id=owner_key_id,
    )
    values = {field: getattr(model, field) for field in TrainedModel.__slots__ if field != "id"}
    key = conn.execute(insert(trained_models).values(**values)).inserted_primary_key
    assert key is not None
    return replace(model, id=int(key[0]))


def get_trained(
    conn: Connection,
    name: str,
    version: int | None = None,
    *,
    with_head: bool = True,
    visible_to: int | None = None,
) -> TrainedModel | None:
    """Version ``version`` (default: the latest) of trained model ``name``, or None (also
    when key ``visible_to`` may not see it)."""
    columns = list(trained_models.c) if with_head else _LISTED
    query = _where_visible(select(*columns).where(trained_models.c.name == name), visible_to)
    if version is None:
        query = query.order_by(trained_models.c.version.desc()).limit(1)
    else:
        query = query.where(trained_models.c.version == version)
    row = conn.execute(query).first()
    return _from_row(row) if row is not None else None


def trained_by_job(conn: Connection, job_id: str) -> TrainedModel | None:
    """The version training job ``job_id`` registered (without its head), or None."""
    row = conn.execute(select(*_LISTED).where(trained_models.c.job_id == job_id)).first()
    return _from_row(row) if row is not None else None


def _where_visible(query: Any, visible_to: int | None) -> Any:
    condition = _visible(visible_to)
    return query if condition is None else query.where(condition)


def list_trained(conn: Connection, *, visible_to: int | None = None) -> list[TrainedModel]:
    """The latest version of every trained model (without heads) ``visible_to`` sees, by name."""
    latest = (
        select(trained_models.c.name, func.max(trained_models.c.version).label("version"))
        .group_by(trained_models.c.name)
        .subquery()
    )
    query = (
        select(*_LISTED)
        .join(
            latest,
            (latest.c.name == trained_models.c.name)
            & (latest.c.version == trained_models.c.version),
        )
        .order_by(trained_models.c.name)
    )
    return [_from_row(row) for row in conn.execute(_where_visible(query, visible_to))]


def list_versions(
    conn: Connection, name: str, *, visible_to: int | None = None
) -> list[TrainedModel]:
    """Every version of trained model ``name`` (without heads), newest first."""
    query = _where_visible(
        select(*_LISTED)
        .where(trained_models.c.name == name)
        .order_by(trained_models.c.version.desc()),
        visible_to,
    )
    return [_from_row(row) for row in conn.execute(query)]


def spec_for(model: TrainedModel, registry: Registry) -> TrainedSpec:
    """The spec that scores with ``model`` (which must carry its head).

    Raises:
        RegistryError: The model's base is no longer in the models file.
    """
    base = registry.models.get(model.base)
    if base is None:
        raise RegistryError(
            f"trained model {model.name!r} ({model.revision}) is built on {model.base!r}, "
            "which is no longer in the models file; put it back or retrain on another base"
        )
    if model.head is None:
        raise ValueError("spec_for needs the model's head; read it with with_head=True")
    accuracy = model.accuracy
    return TrainedSpec(
        name=model.name,
        task=Task(model.task),
        backend=base.backend,
        source=base.source,
        revision=model.revision,
        max_length=base.max_length,
        max_batch_size=base.max_batch_size,
        max_batch_tokens=base.max_batch_tokens,
        top_k=min(base.top_k, len(model.labels)),
        precision=base.precision,
        image_size=base.image_size,
        description=(
            f"trained on {base.name}: {', '.join(model.labels)}"
            + (f"; held-out accuracy {accuracy:.3f}" if accuracy is not None else "")
        ),
        base_dir=base.base_dir,
        base_spec=base,
        version=model.version,
        labels=tuple(model.labels),
        head_bytes=model.head,
    )


def trained_spec(
    conn: Connection,
    name: str,
    registry: Registry,
    version: int | None = None,
    *,
    visible_to: int | None = None,
) -> TrainedSpec | None:
    """The spec of trained model ``name`` (its latest version by default), or None."""
    model = get_trained(conn, name, version, visible_to=visible_to)
    return spec_for(model, registry) if model is not None else None


def trained_table_exists(database_url: str) -> bool:
    """Whether the database exists and has the ``trained_models`` table.

    A database that does not exist yet, or predates the table, simply has no trained
    models: asking must neither create a SQLite file nor fail.
    """
    url = make_url(database_url)
    file_name = url.database if url.get_backend_name() == "sqlite" else None
    if file_name not in (None, "", ":memory:") and not Path(str(file_name)).exists():
        return False
    with get_engine(database_url).connect() as conn:
        return inspect(conn).has_table(trained_models.name)


class SqlTrainedModels:
    """The :class:`core.models.registry.TrainedModels` of one database (see
    :func:`trained_table_exists` for a database without trained models), as key
    ``visible_to`` sees them (None: all of them)."""

    def __init__(self, database_url: str, visible_to: int | None = None) -> None:
        self.database_url = database_url
        self.visible_to = visible_to

    def spec(self, name: str, registry: Registry) -> ModelSpec | None:
        if not trained_table_exists(self.database_url):
            return None
        with get_engine(self.database_url).connect() as conn:
            return trained_spec(conn, name, registry, visible_to=self.visible_to)

    def names(self) -> list[str]:
        if not trained_table_exists(self.database_url):
            return []
        with get_engine(self.database_url).connect() as conn:
            query = _where_visible(
                select(trained_models.c.name).distinct().order_by(trained_models.c.name),
                self.visible_to,
            )
            return list(conn.scalars(query))
