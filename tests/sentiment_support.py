"""The shipped review set and its bag-of-words baseline, shared by the sentiment tests.

``tests/unit/test_sentiment_mini.py`` (the shipped head) and
``tests/unit/test_train_sentiment.py`` (a head trained by ``bulkscore train``'s code) both
hold a minilm head to the same bar: well above chance, and above the best bag-of-words
logistic regression fitted on the same split.
"""

from __future__ import annotations

import csv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "core" / "models" / "data" / "sentiment_reviews.csv"

Splits = dict[str, tuple[list[str], list[str]]]


def read_rows(path: Path = DATA) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def split_rows(rows: list[dict[str, str]]) -> Splits:
    """``split -> (texts, labels)`` for the train and test splits."""
    result: Splits = {"train": ([], []), "test": ([], [])}
    for row in rows:
        result[row["split"]][0].append(row["text"])
        result[row["split"]][1].append(row["label"])
    return result


def bag_of_words_scores(splits: Splits) -> dict[tuple[str, tuple[int, int], float], float]:
    """Held-out accuracy of bag-of-words logistic regressions trained on the train split.

    The baseline gets every advantage: each vectoriser, n-gram range and C is scored on the
    test split itself, so a head beating the best of them is not beating one bad setting.
    """
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_texts, train_labels = splits["train"]
    test_texts, test_labels = splits["test"]
    scores = {}
    for vectorizer in (CountVectorizer, TfidfVectorizer):
        for ngrams in ((1, 1), (1, 2)):
            for c in (0.1, 1.0, 10.0, 100.0):
                features = vectorizer(ngram_range=ngrams)
                x_train = features.fit_transform(train_texts)
                model = LogisticRegression(C=c, max_iter=5000).fit(x_train, train_labels)
                score = model.score(features.transform(test_texts), test_labels)
                scores[(vectorizer.__name__, ngrams, c)] = float(score)
    return scores
