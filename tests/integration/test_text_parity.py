"""Batched, length-sorted scoring equals the plain pipeline on each text alone."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app

WORDS = [
    "good",
    "bad",
    "film",
    "plot",
    "actor",
    "music",
    "boring",
    "great",
    "awful",
    "scene",
    "story",
    "love",
    "hate",
]


def texts_of_many_lengths(seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    lengths = [1, 2, 3, 5, 8, 13, 40, 90, 200, 350, 505, 600] + [
        rng.randint(1, 600) for _ in range(28)
    ]
    rng.shuffle(lengths)
    return [" ".join(rng.choice(WORDS) for _ in range(n)) for n in lengths]


def test_bulkscore_score_equals_pipeline_on_each_text_alone(
    tmp_path: Path, settings_env: dict[str, str], tiny_text_model: Path
) -> None:
    from transformers import pipeline

    texts = texts_of_many_lengths()
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["score", str(source), "--model", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [row["id"] for row in rows] == [f"t{i}" for i in range(len(texts))]

    classifier = pipeline("text-classification", model=str(tiny_text_model), device="cpu")
    for text, row in zip(texts, rows, strict=True):
        expected = classifier(text, truncation=True, max_length=512)[0]
        assert row["label"] == expected["label"]
        assert abs(float(row["score"]) - expected["score"]) < 1e-4
        top = json.loads(row["top_k"])
        assert top[0] == [row["label"], float(row["score"])]
        assert abs(sum(score for _, score in top) - 1.0) < 1e-5
