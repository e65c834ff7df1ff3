"""Runners, one module per backend; :func:`build_runner` picks one for a model spec.

Backends are imported only when a model needs them, so a text-only worker never loads
TensorFlow and vice versa.
"""

from __future__ import annotations

from core.config import Settings
from core.models.registry import Backend, ModelSpec, Task
from core.models.trained import TrainedSpec
from engine.runners.base import ModelLoadError, Runner

# The install profile that brings each framework (pyproject.toml's optional dependencies).
EXTRA_OF_MODULE = {"tensorflow": "keras", "keras": "keras"}


def build_runner(spec: ModelSpec, settings: Settings | None = None) -> Runner:
    """An un-set-up runner for ``spec`` (call ``setup(device)`` next).

    Raises:
        ModelLoadError: Also when the framework of the model's backend is not installed
            (the base install is the API and the CLI client): the message names the
            install profile that brings it.
    """
    try:
        return _runner_for(spec, settings)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        extra = EXTRA_OF_MODULE.get(top, "worker")
        raise ModelLoadError(
            f"model {spec.name!r} needs {top or 'a framework'}, which is not installed: "
            f"pip install 'bulkscore[{extra}]' (or ./install.sh, which installs everything)"
        ) from exc


def _runner_for(spec: ModelSpec, settings: Settings | None) -> Runner:
    """Each backend module is imported only here, when a model needs it: a text-only worker
    never loads TensorFlow, and an image-only one never loads transformers.
    """
    if isinstance(spec, TrainedSpec):
        # Deferred: numpy and the base's backend. A trained model (bulkscore train): its
        # base's features through its stored head.
        from engine.runners.head_runner import HeadRunner

        return HeadRunner(spec, settings)
    if spec.backend == Backend.EFFICIENTNET_LITE:
        # Deferred: torch and ONNX Runtime. Both tasks: ImageNet labels, or the pooled
        # features (a backbone).
        from engine.runners.efficientnet_lite import EfficientNetLiteRunner

        return EfficientNetLiteRunner(spec, settings)
    if spec.backend == Backend.STANDIN:
        # Deferred: transformers (its tokenizer only). A planning tool, never a model.
        from engine.runners.standin import StandinTextRunner

        return StandinTextRunner(spec, settings)
    if spec.backend == Backend.TRANSFORMERS and spec.task in (
        Task.TEXT_CLASSIFICATION,
        Task.FEATURE_EXTRACTION,
    ):
        # Deferred: transformers.
        from engine.runners.transformers_text import TransformersTextRunner

        return TransformersTextRunner(spec, settings)
    if spec.task == Task.IMAGE_CLASSIFICATION and spec.backend == Backend.KERAS:
        # Deferred: TensorFlow.
        from engine.runners.keras_image import KerasImageRunner

        return KerasImageRunner(spec, settings)
    if spec.task == Task.FEATURE_EXTRACTION and spec.backend == Backend.KERAS:
        # Deferred: TensorFlow.
        from engine.runners.keras_features import KerasFeatureRunner

        return KerasFeatureRunner(spec, settings)
    if spec.task == Task.IMAGE_CLASSIFICATION and spec.backend == Backend.TRANSFORMERS:
        # Deferred: transformers and Pillow.
        from engine.runners.transformers_image import TransformersImageRunner

        return TransformersImageRunner(spec, settings)
    raise ModelLoadError(
        f"model {spec.name!r}: no runner for task {spec.task.value!r} with backend "
        f"{spec.backend.value!r} yet"
    )


__all__ = ["ModelLoadError", "Runner", "build_runner"]
