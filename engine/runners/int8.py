"""``precision = "int8"`` on CPU: dynamic quantization of a transformer's Linear layers.

Weights are stored as int8 once; each Linear's input is quantized to uint8 on the fly (no
calibration data). Two choices decide the quality, measured on the real all-MiniLM-L6-v2
over the 500 bench texts (mean cosine of int8 vs fp32 embeddings, ``bench/``):

- per-channel weight scales (one per output row) instead of one per tensor: 0.924 -> 0.972;
- full-range activations: PyTorch's dynamic Linear hard-codes ``reduce_range=True``
  (7-bit inputs), which only protects CPUs without VNNI, whose int8 dot product
  (``vpmaddubsw``) saturates 16-bit sums. With VNNI (or AMX) the sums are 32-bit, so all 8
  bits are safe and the cosine goes 0.972 -> 0.992. Without VNNI it stays reduced (0.972).

Speed on the 2-core development machine (AVX-512 VNNI): ~1.5x fp32 for MiniLM and ~2x for
DistilBERT-base (``bench/text_throughput.py`` prints both side by side).
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch.ao.nn.quantized import dynamic as quantized_dynamic

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
# CPU flags whose int8 dot products accumulate in 32 bits (no 16-bit saturation).
WIDE_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@lru_cache(maxsize=1)
def full_range_safe(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU multiplies uint8 x int8 without saturating (VNNI or AMX)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(WIDE_INT8_FLAGS & set(line.split(":", 1)[1].split()))
    return False


class FullRangeDynamicLinear(quantized_dynamic.Linear):  # type: ignore[misc]
    """A dynamic int8 Linear that quantizes its input to all 8 bits (VNNI CPUs only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_params._packed_params
        out = torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)
        return out.to(x.dtype)


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``nn.Linear`` dynamically quantized to int8 (see module doc)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    full_range = full_range_safe()
    if not full_range:
        log.warning(
            "int8: this CPU has no VNNI, so activations are quantized to 7 bits and quality "
            "drops more than on a VNNI CPU (MiniLM cosine 0.972 vs 0.992, bench/README.md); "
            'precision = "onnx-int8" keeps 8-bit activations here'
        )
    mapping = {torch.nn.Linear: FullRangeDynamicLinear if full_range else quantized_dynamic.Linear}
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; it is what torch ships.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized: Any = quantize_dynamic(
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}, mapping=mapping
        )
    return quantized
