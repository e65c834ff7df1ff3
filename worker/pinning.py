"""Pin a worker process to one GPU (or to the CPU) before any ML framework is imported.

This is the one place besides ``core/config.py`` that touches ``os.environ``, because it
must: CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when a framework first initialises it, and
TensorFlow grabs memory on every GPU it can see. The only way to give a process exactly one
GPU is to set the variable in this process before torch or tensorflow load, which is what
:func:`pin_device` does and checks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

# Modules that read CUDA_VISIBLE_DEVICES (or start CUDA) once they are imported and used.
FRAMEWORK_MODULES = ("torch", "tensorflow", "jax", "keras", "transformers")


class PinningError(RuntimeError):
    """The device cannot be pinned any more (a framework was imported first)."""


@dataclass(frozen=True, slots=True)
class Pinned:
    """Where this process runs models."""

    device: str  # the device string runners get: "cpu" or "cuda"
    visible_devices: str  # the CUDA_VISIBLE_DEVICES value set

    def describe(self) -> str:
        if self.device == "cpu":
            return "CPU (no GPU visible)"
        return f"GPU {self.visible_devices} (seen by the process as cuda:0)"


def imported_frameworks(modules: Iterable[str] | None = None) -> list[str]:
    """The framework modules already imported into this process."""
    names = set(sys.modules if modules is None else modules)
    return [name for name in FRAMEWORK_MODULES if name in names]


def pin_device(
    gpu: int | None,
    environ: MutableMapping[str, str] | None = None,
    modules: Iterable[str] | None = None,
) -> Pinned:
    """Make GPU ``gpu`` the only one this process sees, or hide every GPU when None.

    Args:
        gpu: The GPU index as ``nvidia-smi`` numbers them (inside a container with one
            reserved GPU, that GPU is 0), or None for a CPU worker.
        environ: The environment to change (``os.environ`` by default; tests pass a dict).
        modules: Names of imported modules (``sys.modules`` by default; tests pass a list).

    Returns:
        The device string runners should use: ``"cuda"`` (the one visible GPU) or ``"cpu"``.

    Raises:
        PinningError: A framework is already imported, so the setting may come too late.
        ValueError: ``gpu`` is negative.
    """
    env = os.environ if environ is None else environ
    too_late = imported_frameworks(modules)
    if too_late:
        raise PinningError(
            f"cannot pin the device: {', '.join(too_late)} was imported before the worker set "
            "CUDA_VISIBLE_DEVICES; import ML frameworks only after worker.pinning.pin_device()"
        )
    if gpu is None:
        # A CPU worker on a GPU host must not touch the GPUs: an empty list hides them all,
        # so neither torch nor TensorFlow creates a CUDA context or reserves GPU memory.
        env["CUDA_VISIBLE_DEVICES"] = ""
        return Pinned(device="cpu", visible_devices="")
    if gpu < 0:
        raise ValueError(f"--gpu must be 0 or more, not {gpu}")
    # CUDA numbers GPUs fastest-first by default; PCI order matches nvidia-smi and Docker's
    # device_ids, so "--gpu 1" means the GPU operators see as 1.
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return Pinned(device="cuda", visible_devices=str(gpu))


def set_tokenizers_parallelism(
    environ: MutableMapping[str, str] | None = None, threads: int | None = None
) -> str:
    """Decide ``TOKENIZERS_PARALLELISM`` explicitly, before the tokenizers library loads.

    The worker never forks after loading a model (solo or threads pool), so the Rust
    tokenizer's own thread pool is safe and speeds up encoding a chunk; leaving the variable
    unset makes the library guess, and warn or silently disable itself after any fork. Its
    pool (rayon) is as wide as the machine by default, so a worker given ``threads`` cores
    sizes it to match (``RAYON_NUM_THREADS``), and a one-thread worker turns it off rather
    than encode on the cores another worker was given. An operator's explicit value wins.
    """
    env = os.environ if environ is None else environ
    if threads is not None and threads <= 1:
        return env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads is not None:
        env.setdefault("RAYON_NUM_THREADS", str(threads))
    return env.setdefault("TOKENIZERS_PARALLELISM", "true")
