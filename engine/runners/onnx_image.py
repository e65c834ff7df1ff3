"""A torch image model run by ONNX Runtime on CPU, exported once when its runner loads.

Why: PyTorch's eager CPU kernels make one pass over the activations per operator, and a
mobile network such as EfficientNet-Lite0 is made of cheap, memory-bound operators
(depthwise convolutions, batch norms, ReLU6, "same" padding: 36% of its CPU time in a torch
profile). ONNX Runtime folds the batch norms into the convolutions and fuses the
activations: on the 2-core AVX2 machine, batch 32, 25.3 images/s against PyTorch's 2.5 in
one run of ``bench/imagenet_lite.py`` (24.9-33.7 against 3.1-4.0 in another), the logits
within 1e-5 (bench/README.md).

The export uses the TorchScript exporter (``dynamo=False``: no ``onnxscript`` needed), a
dynamic batch axis, and a temporary file that lives only while the session loads.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

OPSET = 17


class OnnxImageModel:
    """An ONNX Runtime session over an exported image model: NCHW float32 in, its outputs out."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one operator at a time: no pool to compete
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
        """The named ``outputs`` (default: all) for a float32 ``N x C x H x W`` batch."""
        return list(self.session.run(outputs, {self.input: pixels}))


def export_image_model(
    module: torch.nn.Module, size: int, outputs: list[str], threads: int
) -> OnnxImageModel:
    """``module`` (fp32, CPU, eval; ``N x 3 x size x size`` in) as an ONNX Runtime session."""
    probe = torch.zeros(1, 3, size, size)
    axes = {name: {0: "batch"} for name in ["pixels", *outputs]}
    with tempfile.TemporaryDirectory(prefix="bulkscore-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter is deprecated in favour of dynamo (which needs
            # onnxscript); it exports these convolutions exactly (the runner checks).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (probe,),
                str(path),
                input_names=["pixels"],
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        return OnnxImageModel(path, threads)
