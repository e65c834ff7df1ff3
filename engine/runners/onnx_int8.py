"""``precision = "onnx-int8"``: a text model exported to ONNX and run int8 by ONNX Runtime.

Why a second int8 path next to ``precision = "int8"`` (PyTorch dynamic quantization): on a
CPU without VNNI, PyTorch quantizes activations to 7 bits to stay clear of the AVX2
``vpmaddubsw`` saturation, and MiniLM's embeddings then drift to a mean cosine of 0.972
against fp32. ONNX Runtime can quantize the *weights* to unsigned 8 bits instead (U8U8),
which avoids the saturation with full 8-bit activations: measured on the 2-core AVX2
machine, mean cosine 0.992 at 1.68x fp32 PyTorch (bench/README.md). On a VNNI CPU there is
no saturation, and signed weights (U8S8, the faster kernel) are used.

The model is exported once per process with the TorchScript exporter (``dynamo=False``:
no ``onnxscript`` needed), with dynamic batch and sequence axes, quantized per channel with
``onnxruntime.quantization.quantize_dynamic``, and loaded into an ``InferenceSession`` with
the worker's thread count. The module stands in for the torch model in the runner: it is
called with the padded batch and answers ``.logits`` or ``.last_hidden_state``.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.runners.int8 import full_range_safe

log = logging.getLogger(__name__)
OPSET = 17


class _Exported(nn.Module):
    """The model as a function of plain tensors, which the exporter needs."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...], output: str) -> None:
        super().__init__()
        self.model = model
        self.keys = keys
        self.output = output

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(**dict(zip(self.keys, tensors, strict=True))), self.output)


def export_int8(
    model: nn.Module,
    probe: dict[str, torch.Tensor],
    output: str,
    folder: Path,
) -> Path:
    """Export ``model`` (fp32, CPU, eval) to ONNX and quantize it; the int8 file's path."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keys = tuple(probe)
    exported = _Exported(model, keys, output).eval()
    fp32_path, int8_path = folder / "model.onnx", folder / "model.int8.onnx"
    axes = {key: {0: "batch", 1: "sequence"} for key in keys}
    axes["output"] = {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of dynamo (which needs
        # onnxscript); it still exports these encoders exactly (checked in the tests).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exported,
            tuple(probe[key] for key in keys),
            str(fp32_path),
            input_names=list(keys),
            output_names=["output"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    model.eval()  # the exporter may leave training mode on (dropout) in the source model
    signed = full_range_safe()
    log.info("onnx-int8: quantizing %s weights", "s8" if signed else "u8")
    weights = QuantType.QInt8 if signed else QuantType.QUInt8
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=weights, per_channel=True)
    fp32_path.unlink()
    return int8_path


class OnnxInt8Model:
    """An ONNX Runtime session that answers like the torch model it was exported from."""

    def __init__(self, path: Path, output: str, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        # The exporter drops inputs a model ignores (DistilBERT takes no token_type_ids).
        self.keys = tuple(spec.name for spec in self.session.get_inputs())
        self.output = output

    def __call__(self, **features: torch.Tensor) -> Any:
        feeds = {key: features[key].numpy().astype(np.int64, copy=False) for key in self.keys}
        (result,) = self.session.run(["output"], feeds)
        return SimpleNamespace(**{self.output: torch.from_numpy(result)})


def onnx_int8_model(
    model: nn.Module, probe: dict[str, torch.Tensor], output: str, threads: int
) -> OnnxInt8Model:
    """``model`` exported, quantized and loaded; the files live only while it loads."""
    with tempfile.TemporaryDirectory(prefix="bulkscore-onnx-") as folder:
        path = export_int8(model, probe, output, Path(folder))
        session = OnnxInt8Model(path, output, threads)
    return session
