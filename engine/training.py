"""Fitting a head on frozen features: stratified hold-out, logistic regression, evaluation.

The recipe of ``scripts/build_sentiment_mini.py``, for any labels: features come from the
backbone's own batched runner (so training sees exactly what scoring computes), the
regularisation strength ``C`` is chosen by stratified cross-validation on the training part
only, and the evaluation is computed on a stratified, seeded hold-out that training never
sees. The head stored is then fitted again on every example with the chosen ``C`` (see
:func:`fit_head`): the hold-out's scores estimate it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.training.data import LabelledExamples, check_examples
from engine.runners.base import Progress
from engine.runners.head_runner import extract_features
from engine.scoring import runner_input

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
CV_FOLDS = 5
MAX_ITER = 5000
SKIPPED_SHOWN = 20  # skipped examples named in the metrics (all are counted)


@dataclass(frozen=True)
class FittedHead:
    """A softmax layer over features, its labels (in row order) and its evaluation."""

    weight: np.ndarray  # [labels, dim] float32
    bias: np.ndarray  # [labels] float32
    labels: list[str]
    metrics: dict[str, Any]


def split_holdout(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and hold-out parts, stratified: each label in both."""
    from sklearn.model_selection import train_test_split

    n_labels = len(np.unique(targets))
    size = max(n_labels, round(fraction * len(targets)))
    train, holdout = train_test_split(
        np.arange(len(targets)), test_size=size, stratify=targets, random_state=seed
    )
    return np.sort(train), np.sort(holdout)


def choose_c(features: np.ndarray, targets: np.ndarray, seed: int) -> tuple[float, float | None]:
    """``C`` by stratified cross-validation (and its mean accuracy); 1.0 if too few to fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = min(CV_FOLDS, int(np.bincount(targets).min()))
    if folds < 2:
        return 1.0, None
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = {
        c: float(
            cross_val_score(
                LogisticRegression(C=c, max_iter=MAX_ITER), features, targets, cv=splitter
            ).mean()
        )
        for c in C_GRID
    }
    # Ties go to the smaller C (stronger regularisation): it generalises at least as well.
    best = max(C_GRID, key=lambda c: (round(scores[c], 6), -c))
    return best, scores[best]


def softmax_layer(model: Any, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted ``LogisticRegression`` as one logit per label for a softmax."""
    coef = np.asarray(model.coef_, dtype=np.float64)
    intercept = np.asarray(model.intercept_, dtype=np.float64)
    if n_labels == 2 and coef.shape[0] == 1:
        # Binary: p(second) = sigmoid(w.x + b), and softmax([-z/2, z/2]) = [1 - s(z), s(z)].
        half_w, half_b = coef[0] / 2, intercept[0] / 2
        return np.stack([-half_w, half_w]), np.array([-half_b, half_b])
    return coef, intercept


def fold_scaler(
    weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The layer over standardised features as one over raw features (one matmul at scoring)."""
    folded = weight / scale
    return folded, bias - folded @ mean


def evaluate(truth: np.ndarray, predicted: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-label precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    positions = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=positions, zero_division=0
    )
    return {
        "accuracy": float(np.mean(truth == predicted)),
        "macro_f1": float(np.mean(f1)),
        "per_label": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        # Rows: the true label; columns: the predicted one; both in `labels` order.
        "confusion_matrix": confusion_matrix(truth, predicted, labels=positions).tolist(),
    }


def _fit_layer(
    features: np.ndarray, targets: np.ndarray, n_labels: int, c: float
) -> tuple[np.ndarray, np.ndarray]:
    """A logistic regression on standardised ``features``, as a layer over raw features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    # Standardised features: ResNet's pooled activations span orders of magnitude where
    # minilm's are unit vectors; one C grid then fits both. The scaler is folded into the
    # layer, so scoring stays one matmul.
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=c, max_iter=MAX_ITER).fit(scaler.transform(features), targets)
    weight, bias = softmax_layer(model, n_labels)
    return fold_scaler(weight, bias, scaler.mean_, scaler.scale_)


def fit_head(
    features: np.ndarray,
    labels: Sequence[str],
    holdout_fraction: float,
    seed: int,
    *,
    refit: bool = True,
) -> FittedHead:
    """Fit and evaluate a logistic-regression head on ``features`` labelled ``labels``.

    ``C`` is chosen and the head fitted on the training part only, and evaluated on the
    hold-out. With ``refit`` (the default) the head returned is then fitted again, same
    ``C``, on every example: with a few examples per label, the fifth that the hold-out
    took is worth having, and the hold-out's scores estimate the refitted head's
    (conservatively, since it learnt from more). Without ``refit`` the head returned is
    exactly the one evaluated.
    """
    from sklearn.preprocessing import StandardScaler

    names = sorted(set(labels))
    targets = np.array([names.index(label) for label in labels], dtype=np.int64)
    train, holdout = split_holdout(targets, holdout_fraction, seed)
    scaled = StandardScaler().fit(features[train]).transform(features[train])
    c, cv_accuracy = choose_c(scaled, targets[train], seed)
    weight, bias = _fit_layer(features[train], targets[train], len(names), c)
    # Evaluate the layer itself (as scoring computes it), not sklearn's object.
    predicted = np.argmax(features[holdout] @ weight.T + bias, axis=1)
    majority = int(np.bincount(targets[train]).argmax())
    metrics = evaluate(targets[holdout], predicted, names)
    metrics.update(
        labels=names,
        train_size=len(train),
        holdout_size=len(holdout),
        holdout_fraction=holdout_fraction,
        seed=seed,
        majority_baseline=float(np.mean(targets[holdout] == majority)),
        classifier="logistic regression (L2, lbfgs) on standardised features",
        C=c,
        cv_accuracy=cv_accuracy,
        feature_dim=int(features.shape[1]),
        refit_on_all=refit,
    )
    if refit:
        weight, bias = _fit_layer(features, targets, len(names), c)
    return FittedHead(weight.astype(np.float32), bias.astype(np.float32), names, metrics)


@dataclass(frozen=True)
class TrainingOutcome:
    """A fitted head and the examples it used and skipped."""

    head: FittedHead
    used: int
    skipped: int


def train(
    backbone: Any,
    examples: LabelledExamples,
    *,
    holdout_fraction: float,
    seed: int,
    progress: Progress | None = None,
) -> TrainingOutcome:
    """Features of every usable example from ``backbone``, then :func:`fit_head`.

    Examples the backbone cannot read (an image that does not decode) are skipped like the
    files refused when the data was read; the counts are checked again without them.

    Raises:
        TrainingDataError: Too few usable examples of a label, or a single label.
    """
    check_examples(examples)
    usable = examples.usable
    vectors, errors = extract_features(
        backbone, [runner_input(examples.items[i]) for i in usable], progress
    )
    failed = {usable[j]: error for j, error in enumerate(errors) if error is not None}
    if failed:
        examples = examples.without(set(failed), failed)
        check_examples(examples)
    keep = [j for j, error in enumerate(errors) if error is None]
    head = fit_head(
        vectors[keep], [examples.labels[usable[j]] for j in keep], holdout_fraction, seed
    )
    skipped = examples.skipped
    head.metrics.update(
        examples=len(examples.items),
        used=len(keep),
        skipped=len(skipped),
        skipped_examples=[[ident, reason] for ident, reason in skipped[:SKIPPED_SHOWN]],
    )
    return TrainingOutcome(head, used=len(keep), skipped=len(skipped))
