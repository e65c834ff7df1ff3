"""The model registry: model names and their configuration, read from a TOML file.

Names only: this module never loads a model. A job may only name a registered model; a
name that looks like a path or hub id is refused like any other unknown name, so callers
cannot make a worker fetch or open arbitrary things.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.config import Settings, get_settings
from core.queues import model_queue

# Use fullmatch: "$" alone also matches before a final newline. The anchors stay for the
# API, which hands the same pattern to its parameters' schema.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
PACKAGE_PREFIX = "package:"
# "builtin:data/x" names a file shipped with bulkscore beside the default models file, so
# that a copy of that file (anywhere) still finds the shipped heads and data.
BUILTIN_PREFIX = "builtin:"
SHIPPED_DIR = Path(__file__).resolve().parent


class Task(StrEnum):
    TEXT_CLASSIFICATION = "text-classification"
    IMAGE_CLASSIFICATION = "image-classification"
    FEATURE_EXTRACTION = "feature-extraction"


class Backend(StrEnum):
    TRANSFORMERS = "transformers"
    KERAS = "keras"
    # A state dict for the efficientnet-lite-pytorch architecture (imagenet-lite).
    EFFICIENTNET_LITE = "efficientnet-lite"
    # A planning tool, never a model: a real tokenizer and fixed scores from a forward pass
    # that only sleeps (engine/runners/standin.py), to measure the CPU side of a worker.
    STANDIN = "standin"


# Backends whose models take images whatever their task (a feature extractor included).
IMAGE_BACKENDS = frozenset({Backend.KERAS, Backend.EFFICIENTNET_LITE})


class InputKind(StrEnum):
    TEXT = "text"
    IMAGE = "image"


class RegistryError(Exception):
    """The models file is missing or malformed."""


class UnknownModelError(LookupError):
    """A job named a model that is not in the registry."""

    def __init__(self, name: str, known: list[str]) -> None:
        hint = ""
        if "/" in name or "\\" in name or name.startswith("."):
            hint = (
                " Model names are registry names, never paths or hub ids: add the model to "
                "the models file (BULKSCORE_MODELS) under a name and use that name."
            )
        # Cut: the name is the caller's input, echoed back; a megabyte name must not be.
        shown = repr(name[:80]) + ("..." if len(name) > 80 else "")
        super().__init__(
            f"unknown model {shown}; known models: {', '.join(known) or '(none)'}.{hint}"
        )
        self.name = name
        self.known = known


class ModelSpec(BaseModel):
    """One ``[models.NAME]`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    task: Task
    backend: Backend
    source: str
    revision: str | None = None
    max_length: int | None = Field(default=None, ge=1)
    max_batch_size: int | None = Field(default=None, ge=1)
    max_batch_tokens: int | None = Field(default=None, ge=16)
    top_k: int = Field(default=5, ge=1)
    precision: str = Field(default="fp32", pattern="^(fp32|fp16|bf16|int8|onnx-int8)$")
    image_size: int = Field(default=224, ge=8)
    head: str | None = None
    # backend = "standin" only: the simulated forward pass's speed in real (non-pad) tokens
    # per second; 0 makes it cost nothing. Finite, so a typo such as "inf" is refused.
    standin_tokens_per_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    description: str = ""
    # The folder the models file lives in, to resolve relative sources.
    base_dir: Path = Path(".")

    @model_validator(mode="after")
    def _standin_fields(self) -> ModelSpec:
        if self.backend == Backend.STANDIN and self.task != Task.TEXT_CLASSIFICATION:
            raise ValueError('backend "standin" is for task "text-classification" only')
        if self.backend != Backend.STANDIN and self.standin_tokens_per_s:
            raise ValueError('standin_tokens_per_s is for backend "standin" only')
        return self

    @property
    def input_kind(self) -> InputKind:
        if self.task == Task.IMAGE_CLASSIFICATION:
            return InputKind.IMAGE
        if self.task == Task.FEATURE_EXTRACTION and self.backend in IMAGE_BACKENDS:
            return InputKind.IMAGE  # an image backbone (ResNet50 without its top) takes images
        return InputKind.TEXT

    @property
    def queue(self) -> str:
        """The Celery queue of this model (one queue per model)."""

        return model_queue(self.name)

    def local_path(self, value: str | None = None) -> Path | None:
        """The local folder or file ``value`` (default: ``source``) names, or None for a hub id."""
        value = self.source if value is None else value
        if value.startswith(BUILTIN_PREFIX):
            return SHIPPED_DIR / value[len(BUILTIN_PREFIX) :]
        if value.startswith(PACKAGE_PREFIX):
            package, _, sub = value[len(PACKAGE_PREFIX) :].partition("/")
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise RegistryError(
                    f"model {self.name!r}: python package {package!r} is not installed"
                )
            return Path(next(iter(spec.submodule_search_locations))) / sub
        if value.startswith(("/", "./", "../", "~")):
            path = Path(value).expanduser()
            return path if path.is_absolute() else (self.base_dir / path).resolve()
        return None

    def file_path(self, value: str) -> Path:
        """A file the entry names that is always local (a head): bare paths are relative too.

        ``data/head.safetensors`` is relative to the models file's folder, like
        ``./data/head.safetensors``.
        """
        path = self.local_path(value)
        return path if path is not None else (self.base_dir / value).resolve()

    def where(self, value: str) -> str:
        """How ``value`` was resolved, for a message about a missing file."""
        if value.startswith(BUILTIN_PREFIX):
            return f"{BUILTIN_PREFIX} is the folder shipped with bulkscore, {SHIPPED_DIR}"
        if value.startswith(PACKAGE_PREFIX):
            return "inside the installed python package"
        if Path(value).expanduser().is_absolute():
            return "an absolute path"
        return (
            f"relative to the models file's folder {self.base_dir}; files shipped with "
            f"bulkscore are named {BUILTIN_PREFIX}data/..."
        )

    def batch_size(self, settings: Settings, device: str = "cpu") -> int:
        if self.max_batch_size:
            return self.max_batch_size
        return settings.max_batch_size if device == "cpu" else settings.gpu_max_batch_size

    def batch_tokens(self, settings: Settings, device: str = "cpu") -> int:
        if self.max_batch_tokens:
            return self.max_batch_tokens
        return settings.max_batch_tokens if device == "cpu" else settings.gpu_max_batch_tokens


class TrainedModels(Protocol):
    """Models trained into the database (``core.models.trained``), looked up by name."""

    def spec(self, name: str, registry: Registry) -> ModelSpec | None:
        """The latest version of trained model ``name`` over ``registry``'s bases, or None."""

    def names(self) -> list[str]:
        """Every trained model's name."""


class Registry:
    """All registered models, by name: the models file's, then (optionally) trained ones."""

    def __init__(
        self,
        models: dict[str, ModelSpec],
        path: Path | None = None,
        trained: TrainedModels | None = None,
    ) -> None:
        self.models = models
        self.path = path
        self.trained = trained

    def with_trained(self, trained: TrainedModels) -> Registry:
        """This registry, also resolving names of trained models (the file's names win)."""
        return Registry(self.models, self.path, trained)

    @classmethod
    def load(cls, path: Path | None = None) -> Registry:
        path = Path(path or get_settings().models)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise RegistryError(f"models file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise RegistryError(f"models file {path} is not valid TOML: {exc}") from exc
        return cls.from_mapping(raw, base_dir=path.resolve().parent, path=path)

    @classmethod
    def from_mapping(
        cls, raw: dict[str, Any], base_dir: Path, path: Path | None = None
    ) -> Registry:
        models: dict[str, ModelSpec] = {}
        for name, entry in (raw.get("models") or {}).items():
            if not NAME_PATTERN.fullmatch(name):
                raise RegistryError(
                    f"model name {name!r} in {path}: use lower-case letters, digits, '.', '_' "
                    "and '-' (at most 64)"
                )
            try:
                models[name] = ModelSpec(name=name, base_dir=base_dir, **entry)
            except (ValidationError, TypeError) as exc:
                raise RegistryError(f"model {name!r} in {path}: {exc}") from exc
        return cls(models, path)

    @property
    def names(self) -> list[str]:
        return sorted(self.models)

    def get(self, name: str) -> ModelSpec:
        """The spec of a registered model; :class:`UnknownModelError` otherwise."""
        spec = self.models.get(name) if isinstance(name, str) else None
        # Only a well-formed name reaches the database: a path or hub id never does.
        if spec is None and self.trained is not None and NAME_PATTERN.fullmatch(str(name)):
            spec = self.trained.spec(str(name), self)
        if spec is None:
            known = self.names
            if self.trained is not None:
                known = sorted(set(known) | set(self.trained.names()))
            raise UnknownModelError(str(name), known)
        return spec
