"""engine.runners.token_prefetch: the next window's texts are tokenised in the background,
once, never by two threads at once, handed out once, and predict gets the same rows as
without it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem
from core.jobs.lifecycle import create_job
from core.jobs.predictions import Prediction
from core.migrate import upgrade
from core.models.registry import ModelSpec
from engine.runners.base import Progress, Runner
from engine.runners.token_prefetch import TokenPrefetch
from engine.scoring import score_items


class CountingTokenizer:
    """Fake tokenizer: ids from characters; records calls; fails if used concurrently."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.busy = threading.Lock()
        self.delay = delay

    def __call__(self, texts: list[str]) -> dict[str, list[Any]]:
        assert self.busy.acquire(blocking=False), "two threads in the tokenizer at once"
        try:
            self.calls.append(list(texts))
            time.sleep(self.delay)
            ids = [[ord(c) for c in text] for text in texts]
            return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}
        finally:
            self.busy.release()


def test_announced_texts_are_tokenised_once_ahead_and_the_rest_now() -> None:
    tokenizer = CountingTokenizer(delay=0.05)
    tokens = TokenPrefetch(tokenizer)
    tokens.announce(["ab", "c", "ab"])
    rows = tokens.encode(["c", "ab", "zz"])  # waits for the announced ones; "zz" now
    assert rows == {
        "input_ids": [[99], [97, 98], [122, 122]],
        "attention_mask": [[1], [1, 1], [1, 1]],
    }
    assert tokenizer.calls == [["ab", "c"], ["zz"]]
    # Rows are handed out once: a later call tokenises again, as it would without prefetch.
    assert tokens.rows == {}
    tokens.encode(["ab", "zz"])
    assert tokenizer.calls[2:] == [["ab", "zz"]]
    tokens.close()


def test_the_tokenizer_is_never_used_by_two_threads() -> None:
    tokenizer = CountingTokenizer(delay=0.01)
    tokens = TokenPrefetch(tokenizer)
    for window in range(20):
        texts = [f"w{window}-{i}" for i in range(8)]
        tokens.announce([f"w{window + 1}-{i}" for i in range(8)])
        assert tokens.encode(texts)["input_ids"][0] == [ord(c) for c in texts[0]]
    tokens.close()


def test_rows_kept_are_bounded() -> None:
    tokens = TokenPrefetch(CountingTokenizer(), capacity=10)
    for window in range(10):
        tokens.announce([f"{window}-{i}" for i in range(5)])
    tokens.encode(["last"])
    assert len(tokens.rows) <= 10
    tokens.close()


def test_a_real_runner_scores_the_same_with_and_without_prefetch(tiny_text_model: Path) -> None:
    from core.config import Settings
    from core.models.registry import ModelSpec
    from engine.runners.transformers_text import TransformersTextRunner

    spec = ModelSpec(
        name="tiny", task="text-classification", backend="transformers", source=str(tiny_text_model)
    )
    texts = [f"review {i} " + "good " * (i % 9) for i in range(40)]
    plain = TransformersTextRunner(spec, Settings(database_url="sqlite://"))
    plain.setup("cpu")
    ahead = TransformersTextRunner(spec, Settings(database_url="sqlite://"))
    ahead.setup("cpu")
    expected = plain.predict(texts[:20]) + plain.predict(texts[20:])
    ahead.prefetch(texts[:20])
    first = ahead.predict(texts[:20])
    ahead.prefetch(texts[20:])
    got = first + ahead.predict(texts[20:])
    for a, b in zip(got, expected, strict=True):
        assert a.label == b.label and abs(a.score - b.score) <= 1e-6
    ahead.close()


def test_batch_top_k_equals_the_per_row_ranking() -> None:
    import numpy as np

    from engine.runners.base import top_k_columns, top_k_pairs

    rng = np.random.default_rng(3)
    scores = rng.random((50, 6)).astype(np.float32)
    scores[0] = [0.2, 0.5, 0.5, 0.1, 0.5, 0.0]  # ties keep label order
    labels = ["a", "b", "c", "d", "e", "f"]
    for got, row in zip(top_k_columns(labels, scores, 3), scores, strict=True):
        expected = top_k_pairs(labels, row.tolist(), 3)
        assert got.top_k == expected and (got.label, got.score) == expected[0]
    assert list(top_k_columns(labels, np.zeros((0, 6)), 3)) == []


@pytest.mark.parametrize(
    ("labels", "special"),
    [
        (["NEGATIVE", "POSITIVE", 'with "quotes" and \u00e9'], None),
        (["a", "b", "c"], float("nan")),  # JSON writes NaN its own way: row by row
        ([0, 1, 2], None),  # labels that are not text: row by row
    ],
)
def test_top_k_columns_read_as_the_same_rows_made_one_by_one(
    labels: list[object], special: float | None
) -> None:
    """A write reads a batch by column (labels, scores, the top-k JSON text for each
    database); the values must be those of the same predictions made one by one."""
    import numpy as np

    from core.jobs.pairs_json import COMPACT_SEPARATORS, DEFAULT_SEPARATORS, PairsJson
    from core.jobs.predictions import PredictionList
    from engine.runners.base import top_k_columns

    scores = np.random.default_rng(5).random((40, 3)).astype(np.float32)
    if special is not None:
        scores[7, 1] = special
    columns = top_k_columns(labels, scores, 2)  # type: ignore[arg-type]
    one_by_one = PredictionList(list(columns))
    assert columns.labels() == one_by_one.labels()
    assert columns.scores() == one_by_one.scores()
    assert columns.errors() == one_by_one.errors() == [None] * 40
    for separators in (DEFAULT_SEPARATORS, COMPACT_SEPARATORS):
        texts = columns.top_k_json(PairsJson(separators))
        assert texts == one_by_one.top_k_json(PairsJson(separators))
        if special is None:
            expected = [json.dumps(p.top_k, separators=separators) for p in one_by_one]
            assert texts == expected


class AnnouncingRunner(Runner):
    """Records, in order, the texts announced (``prefetch``) and the texts predicted."""

    name = "fake"

    def __init__(self) -> None:
        self.events: list[tuple[str, list[str]]] = []

    def setup(self, device: str = "cpu") -> None:
        pass

    def prefetch(self, batch: Sequence[Any]) -> None:
        self.events.append(("prefetch", [str(text) for text in batch]))

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        self.events.append(("predict", [str(text) for text in batch]))
        return [Prediction(label="x", score=1.0) for _ in batch]


def test_scoring_announces_two_windows_ahead(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ahead.db'}"
    upgrade(url)
    engine = get_engine(url)
    spec = ModelSpec(name="fake", task="text-classification", backend="transformers", source="/x")
    # One length: two texts per window (engine.window_order), in an order of its own.
    inputs = [InputItem(item_id=f"r{i}", text=f"text {i:02d}") for i in range(10)]
    with engine.begin() as conn:
        job = create_job(conn, spec, inputs, chunk_size=len(inputs))
    runner = AnnouncingRunner()
    score_items(engine, job.id, runner, list(enumerate(inputs)), write_batch_size=2, cache=False)
    dispose_engines()
    windows = [texts for kind, texts in runner.events if kind == "predict"]
    assert [len(window) for window in windows] == [2] * 5
    assert sorted(text for window in windows for text in window) == [i.text for i in inputs]
    for number, window in enumerate(windows):
        before = runner.events[: runner.events.index(("predict", window))]
        announced = [texts for kind, texts in before if kind == "prefetch"]
        # This window, the next one and the one after are announced before it is scored.
        assert announced == windows[: number + 3]
