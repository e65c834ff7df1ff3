"""Loading Hugging Face models from a local folder or the hub, with clear offline errors.

A hub id is first looked up in the local cache only; the network is tried only when a quick
probe says the hub answers, so an offline machine gets a plain message in seconds instead of
a minute of retries and a traceback.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from core.models.registry import ModelSpec
from engine.runners.base import ModelLoadError

T = TypeVar("T")
PROBE_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    parsed = urlparse(constants.ENDPOINT)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_message(spec: ModelSpec) -> str:
    return (
        f"model {spec.name!r}: {spec.source!r} is not in the local Hugging Face cache and the "
        "hub cannot be reached (offline?). Either download it once on a machine with network "
        f"(`huggingface-cli download {spec.source}`) and copy the cache, or save the model to a "
        f'folder and set `source = "/path/to/folder"` for [models.{spec.name}] in the models '
        "file (BULKSCORE_MODELS)."
    )


# Weight files that are Python pickles (torch.save, joblib, numpy object arrays): loading
# one can run any code its author chose. Only safetensors (and Keras/TensorFlow native
# formats, which do not go through this loader) are ever loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")


def refuse_pickled_weights(spec: ModelSpec, folder: Path, kwargs: dict[str, Any]) -> None:
    """Refuse a local model folder whose weights exist only as pickles, with a clear message.

    transformers would fail too with ``use_safetensors=True``, but with a message about a
    missing file; this says what is wrong and how to fix it.
    """
    if not kwargs.get("use_safetensors") or not folder.is_dir():
        return
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"model {spec.name!r}: {folder} has weights only as {', '.join(pickles)} (Python "
            "pickles, which can run arbitrary code when loaded); bulkscore loads only "
            "safetensors. Convert once where you trust the file: "
            "`AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`."
        )


def load_pretrained(
    spec: ModelSpec, loader: Callable[..., T], source: str | None = None, **kwargs: Any
) -> T:
    """Call ``loader(source, ...)`` (a ``from_pretrained``) safely for ``spec``.

    Only safetensors or framework-native weights, never remote code: transformers'
    SECURITY.md names both as the ways a model file runs code.
    """
    source = source or spec.source
    # Forced, not defaulted: no caller and no config.json can turn remote code on.
    kwargs["trust_remote_code"] = False
    local = spec.local_path(source)
    if local is not None:
        if not Path(local).exists():
            raise ModelLoadError(
                f"model {spec.name!r}: local source {local} does not exist ({spec.where(source)})"
            )
        refuse_pickled_weights(spec, Path(local), kwargs)
        try:
            return loader(str(local), local_files_only=True, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model {spec.name!r}: cannot load {local}: {exc}") from exc
    if spec.revision:
        kwargs["revision"] = spec.revision
    try:
        return loader(source, local_files_only=True, **kwargs)
    except OSError:
        pass  # not cached: try the hub below if it answers
    if not hub_reachable():
        raise ModelLoadError(offline_message(spec))
    try:
        return loader(source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"model {spec.name!r}: cannot load {source!r} from the hub: {exc}"
        ) from exc
