"""Build the ``sentiment-mini`` head: a logistic regression on frozen ``minilm`` embeddings.

Reads the hand-written review set
(``core/models/data/sentiment_reviews.csv``: ``text,label,split``),
embeds it with the project's own text runner (so training sees exactly the features that
scoring jobs compute), picks the regularisation strength by stratified cross-validation on
the train split only, and writes the head as safetensors (no pickle) with its evaluation on
the held-out split in the metadata. A bag-of-words logistic regression trained on the same
split is printed beside it, to show what the pretrained backbone adds.

Usage::

    python scripts/build_sentiment_mini.py [--data CSV] [--out HEAD.safetensors] [--models TOML]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a plain script from a checkout, the repository root is not on sys.path.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from core.models.registry import Registry  # noqa: E402

DEFAULT_DATA = REPO_ROOT / "core" / "models" / "data" / "sentiment_reviews.csv"
DEFAULT_OUT = REPO_ROOT / "core" / "models" / "data" / "sentiment-mini-head.safetensors"
DEFAULT_MODELS = REPO_ROOT / "core" / "models" / "models.toml"
BACKBONE = "minilm"
LABELS = ("negative", "positive")
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
CV_FOLDS = 5
SEED = 0


@dataclass(frozen=True)
class Split:
    """Texts and integer labels (index into :data:`LABELS`) of one split."""

    texts: list[str]
    labels: np.ndarray


@dataclass(frozen=True)
class HeadResult:
    """A fitted head as a softmax layer, and how it scored."""

    weight: np.ndarray  # [len(LABELS), dim] float32
    bias: np.ndarray  # [len(LABELS)] float32
    c: float
    cv_accuracy: float
    heldout_accuracy: float


def load_reviews(path: Path) -> tuple[Split, Split]:
    """The train and test splits of a ``text,label,split`` CSV file.

    Raises:
        ValueError: on an unknown label or split, or a text present in both splits.
    """
    rows: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if row["label"] not in LABELS or row["split"] not in rows:
                raise ValueError(f"{path}:{line}: bad label or split {row!r}")
            texts, labels = rows[row["split"]]
            texts.append(row["text"])
            labels.append(LABELS.index(row["label"]))
    # A sentence in both splits would inflate the held-out score.
    overlap = {t.lower() for t in rows["train"][0]} & {t.lower() for t in rows["test"][0]}
    if overlap:
        raise ValueError(f"{path}: texts in both splits: {sorted(overlap)[:5]}")
    train, test = (Split(rows[s][0], np.array(rows[s][1], dtype=np.int64)) for s in rows)
    return train, test


def embed_texts(models_file: Path, splits: list[list[str]]) -> list[np.ndarray]:
    """Embeddings of each list of texts from the registry's ``minilm`` backbone."""
    from engine.runners.transformers_text import TransformersTextRunner

    runner = TransformersTextRunner(Registry.load(models_file).get(BACKBONE))
    runner.setup("cpu")
    return [runner.embed(texts) for texts in splits]


def fit_head(x_train: np.ndarray, train: Split, x_test: np.ndarray, test: Split) -> HeadResult:
    """Fit the logistic regression head, choosing C by cross-validation on ``train`` only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=SEED)
    cv_scores = {
        c: float(
            cross_val_score(
                LogisticRegression(C=c, max_iter=5000), x_train, train.labels, cv=folds
            ).mean()
        )
        for c in C_GRID
    }
    # Ties go to the smaller C (stronger regularisation): it generalises at least as well.
    best_c = max(C_GRID, key=lambda c: (round(cv_scores[c], 6), -c))
    model = LogisticRegression(C=best_c, max_iter=5000).fit(x_train, train.labels)
    heldout = float(model.score(x_test, test.labels))
    # A binary logistic regression is p(positive) = sigmoid(w.x + b); the runner applies a
    # softmax over one logit per label, and softmax([-z/2, z/2]) = [1 - sigmoid(z), sigmoid(z)].
    w = model.coef_[0].astype(np.float64)
    b = float(model.intercept_[0])
    weight = np.stack([-w / 2, w / 2]).astype(np.float32)
    bias = np.array([-b / 2, b / 2], dtype=np.float32)
    return HeadResult(weight, bias, best_c, cv_scores[best_c], heldout)


def bow_baseline_accuracy(train: Split, test: Split) -> tuple[float, float]:
    """Held-out accuracy of a TF-IDF bag-of-words logistic regression, and its chosen C.

    Tuned exactly like the head (C by cross-validation on the train split), so the two
    numbers compare the features, not the tuning effort.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(max_iter=5000),
    )
    search = GridSearchCV(
        pipeline,
        {"logisticregression__C": list(C_GRID)},
        cv=StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=SEED),
    ).fit(train.texts, train.labels)
    return float(search.score(test.texts, test.labels)), float(
        search.best_params_["logisticregression__C"]
    )


def write_head(path: Path, head: HeadResult, metadata: dict[str, str]) -> None:
    """Write the head in the layout the text runner reads (``weight``, ``bias``, ``labels``)."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": torch.from_numpy(head.weight), "bias": torch.from_numpy(head.bias)}
    save_file(tensors, str(path), metadata={"labels": json.dumps(list(LABELS)), **metadata})
    # safetensors creates the file owner-only (0600); a shipped model file must be readable
    # by whichever user runs the worker after a pip install or a container copy.
    path.chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    """Build the head, write it, and print held-out accuracy beside the baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="text,label,split CSV")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="head file to write")
    parser.add_argument(
        "--models", type=Path, default=DEFAULT_MODELS, help=f"models file with [{BACKBONE}]"
    )
    args = parser.parse_args(argv)

    train, test = load_reviews(args.data)
    x_train, x_test = embed_texts(args.models, [train.texts, test.texts])
    head = fit_head(x_train, train, x_test, test)
    bow_accuracy, bow_c = bow_baseline_accuracy(train, test)
    metadata = {
        "backbone": BACKBONE,
        "backbone_model": "sentence-transformers/all-MiniLM-L6-v2",
        "features": "mean-pooled, L2-normalised last hidden state (max_length 256)",
        "classifier": "sklearn LogisticRegression (L2, lbfgs)",
        "C": repr(head.c),
        "cv_accuracy": f"{head.cv_accuracy:.4f}",
        "train_size": str(len(train.texts)),
        "test_size": str(len(test.texts)),
        "heldout_accuracy": f"{head.heldout_accuracy:.4f}",
        "bow_heldout_accuracy": f"{bow_accuracy:.4f}",
        "data": args.data.name,
        "data_sha256": hashlib.sha256(args.data.read_bytes()).hexdigest(),
        "built_by": "scripts/build_sentiment_mini.py",
    }
    write_head(args.out, head, metadata)
    print(f"train {len(train.texts)}, held-out {len(test.texts)}")
    print(
        f"sentiment-mini (minilm + logistic head, C={head.c:g}): "
        f"cv {head.cv_accuracy:.4f}, held-out accuracy {head.heldout_accuracy:.4f}"
    )
    print(
        f"bag-of-words baseline (tf-idf 1-2 grams + logistic, C={bow_c:g}): "
        f"held-out accuracy {bow_accuracy:.4f}"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
