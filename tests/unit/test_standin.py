"""The GPU stand-in runner: real tokenising and batching, a sleeping forward pass, fixed scores."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from core.config import DEFAULT_MODELS_FILE, get_settings
from core.db import dispose_engines, get_engine
from core.inputs.items import InputItem, checked_text_item
from core.jobs.lifecycle import create_job
from core.migrate import upgrade
from core.models.registry import Backend, Registry, RegistryError
from core.tables import results
from engine import scoring
from engine.runners import build_runner
from engine.runners.base import Runner
from engine.runners.standin import StandinTextRunner, standin_logits
from engine.runners.transformers_text import TransformersTextRunner

TEXTS = [
    "short",
    "a somewhat longer text about a film that was fine",
    "the longest text of this batch, by some margin, so that it goes first when sorted "
    "by length and pads the others in its batch",
    "short",
    "",
    "mid length text here",
]


def _registry(model: Path, **entry: Any) -> Registry:
    base = {"task": "text-classification", "source": str(model), "max_batch_size": 2}
    return Registry.from_mapping({"models": {"m": {**base, **entry}}}, base_dir=Path("."))


def _standin(model: Path, tokens_per_s: float = 0.0) -> StandinTextRunner:
    spec = _registry(model, backend="standin", standin_tokens_per_s=tokens_per_s).get("m")
    runner = build_runner(spec, get_settings())
    assert isinstance(runner, StandinTextRunner)
    runner.setup("cpu")
    return runner


class Recorder:
    """Stands in for ``time.sleep`` and the clock: records the simulated time and moves the
    clock by it (and by ``late`` more: a thread that wakes up late), so no test waits."""

    def __init__(self, late: float = 0.0) -> None:
        self.sleeps: list[float] = []
        self.late = late
        self.now = 1_000.0

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.late

    def clock(self) -> float:
        return self.now

    def attach(self, runner: StandinTextRunner) -> None:
        runner.sleep, runner.clock = self.sleep, self.clock


def test_the_same_text_always_gets_the_same_label_and_score(tiny_text_model: Path) -> None:
    runner = _standin(tiny_text_model)
    first = runner.predict(TEXTS)
    # Another order and other batch company: other padding, same results per text.
    again = runner.predict(list(reversed(TEXTS)))[::-1]
    alone = [runner.predict([text])[0] for text in TEXTS]
    assert first == again == alone
    assert first[0] == first[3]  # "short" twice
    assert {p.label for p in first} <= {"NEGATIVE", "POSITIVE"}
    assert len({round(p.score, 6) for p in first}) > 1, "scores differ between texts"
    for prediction in first:
        assert prediction.top_k is not None and len(prediction.top_k) == 2
        assert prediction.top_k[0] == (prediction.label, prediction.score)
        assert sum(score for _, score in prediction.top_k) == pytest.approx(1.0, abs=1e-6)


def test_logits_ignore_padding_on_either_side() -> None:
    ids = np.array([[101, 7, 8, 102]], dtype=np.int64)
    mask = np.ones_like(ids)
    right = standin_logits(np.array([[101, 7, 8, 102, 0, 0]]), np.array([[1, 1, 1, 1, 0, 0]]), 3)
    left = standin_logits(np.array([[0, 0, 101, 7, 8, 102]]), np.array([[0, 0, 1, 1, 1, 1]]), 3)
    plain = standin_logits(ids, mask, 3)
    np.testing.assert_array_equal(right, plain)
    np.testing.assert_array_equal(left, plain)
    swapped = standin_logits(np.array([[101, 8, 7, 102]]), mask, 3)
    assert not np.array_equal(swapped, plain), "token order counts"


def test_batches_are_the_real_runners_batches(
    tiny_text_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same tokenizer, truncation, token budget, length sorting and padded arrays."""
    standin = _standin(tiny_text_model)
    real = build_runner(_registry(tiny_text_model, backend="transformers").get("m"))
    assert isinstance(real, TransformersTextRunner)
    real.setup("cpu")
    seen: dict[str, list[dict[str, np.ndarray]]] = {"real": [], "standin": []}

    def real_forward(features: dict[str, Any], embeddings: bool) -> np.ndarray:
        seen["real"].append({key: value.numpy() for key, value in features.items()})
        return np.zeros((len(features["input_ids"]), 2), dtype=np.float32)

    original = standin._forward

    def standin_forward(features: dict[str, Any], embeddings: bool) -> np.ndarray:
        seen["standin"].append(dict(features))
        return original(features, embeddings)

    monkeypatch.setattr(real, "_forward", real_forward)
    monkeypatch.setattr(standin, "_forward", standin_forward)
    real.predict(TEXTS)
    standin.predict(TEXTS)
    assert standin.max_length == real.max_length
    assert len(seen["real"]) == len(seen["standin"]) == 3  # max_batch_size 2, six texts
    for ours, theirs in zip(seen["standin"], seen["real"], strict=True):
        assert sorted(ours) == sorted(theirs)
        for key, value in theirs.items():
            np.testing.assert_array_equal(ours[key], value)
            assert ours[key].dtype == np.int64


def test_the_forward_pass_sleeps_for_the_real_tokens_of_each_batch(tiny_text_model: Path) -> None:
    runner = _standin(tiny_text_model, tokens_per_s=1_000.0)
    recorder = Recorder()
    recorder.attach(runner)
    runner.predict(TEXTS)
    encoded = runner.tokenizer(TEXTS, truncation=True, max_length=runner.max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    # Longest first, two per batch: real tokens only, padding is free as on a GPU kernel.
    ordered = sorted(lengths, reverse=True)
    expected = [sum(ordered[i : i + 2]) / 1_000.0 for i in range(0, len(ordered), 2)]
    assert recorder.sleeps == pytest.approx(expected)
    assert sum(recorder.sleeps) == pytest.approx(sum(lengths) / 1_000.0)


def test_the_device_keeps_its_own_timeline_as_a_gpu_stream(tiny_text_model: Path) -> None:
    """Batches queued while the device works run back to back on its timeline: a device
    thread that wakes up late after each batch (waiting for the GIL) makes the lateness up
    on the next queued batch, so only the last one's is lost; a batch queued when the
    device is idle starts when it is queued."""
    runner = _standin(tiny_text_model, tokens_per_s=100.0)
    recorder = Recorder(late=0.05)
    recorder.attach(runner)
    ids = np.array([[101, 7, 8, 102], [101, 9, 102, 0]], dtype=np.int64)
    features = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}  # 7 tokens
    start = recorder.now
    for _ in range(3):  # three batches queued at once, before the device took the first
        runner.queued_at.append(start)
    for _ in range(3):
        runner._forward(features, False)
    assert recorder.sleeps == pytest.approx([0.07, 0.02, 0.02])
    assert recorder.now == pytest.approx(start + 3 * 0.07 + 0.05)
    # Queued later, when the device has been idle: the batch takes its whole time.
    recorder.now += 1.0
    runner.queued_at.append(recorder.now)
    runner._forward(features, False)
    assert recorder.sleeps[-1] == pytest.approx(0.07)


def test_the_next_batch_is_padded_while_the_device_works_on_this_one(
    tiny_text_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with queued CUDA kernels: the forward pass of batch k runs on the stand-in's
    device thread while the runner pads batch k + 1, and the rows come back in order."""
    runner = _standin(tiny_text_model, tokens_per_s=1_000.0)
    padded: list[threading.Event] = [threading.Event() for _ in range(3)]
    calls = 0
    tensors = runner._tensors

    def padding(encoded: Any, keys: Any, batch: Any) -> Any:
        nonlocal calls
        padded[calls].set()
        calls += 1
        return tensors(encoded, keys, batch)

    overlapped: list[bool] = []

    def sleep(seconds: float) -> None:
        # The device's first batch waits to see the second one padded (a serial loop pads
        # the second only after the first returned, and would time out here).
        if not overlapped:
            overlapped.append(padded[1].wait(5))
            assert threading.current_thread().name.startswith("standin-device")

    monkeypatch.setattr(runner, "_tensors", padding)
    runner.sleep = sleep
    alone = _standin(tiny_text_model)
    assert [p.label for p in runner.predict(TEXTS)] == [p.label for p in alone.predict(TEXTS)]
    assert overlapped == [True]
    runner.close()
    assert runner.device_queue is None


def test_zero_tokens_per_second_never_sleeps(tiny_text_model: Path) -> None:
    runner = _standin(tiny_text_model)
    recorder = Recorder()
    recorder.attach(runner)
    assert len(runner.predict(TEXTS)) == len(TEXTS)
    assert recorder.sleeps == []


def test_the_stand_in_needs_no_weights(tiny_text_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "labels-only"
    folder.mkdir()
    for path in tiny_text_model.iterdir():
        if path.suffix != ".safetensors":
            (folder / path.name).write_bytes(path.read_bytes())
    runner = _standin(folder)
    assert runner.labels == ["NEGATIVE", "POSITIVE"]
    assert runner.predict(["hello"])[0].label in runner.labels


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"backend": "standin", "standin_tokens_per_s": -1}, "greater than or equal to 0"),
        ({"backend": "standin", "standin_tokens_per_s": float("inf")}, "finite"),
        ({"backend": "standin", "standin_tokens_per_s": "fast"}, "valid number"),
        ({"backend": "transformers", "standin_tokens_per_s": 100.0}, 'backend "standin" only'),
        ({"backend": "standin", "task": "feature-extraction"}, '"text-classification" only'),
    ],
)
def test_the_registry_validates_the_stand_in_fields(
    tiny_text_model: Path, entry: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(RegistryError) as info:
        _registry(tiny_text_model, **entry)
    assert fragment in str(info.value)


def test_the_registry_reads_the_stand_in_from_a_models_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.plan]\ntask = "text-classification"\nbackend = "standin"\n'
        'source = "./tok"\nstandin_tokens_per_s = 250000\n'
    )
    spec = Registry.load(path).get("plan")
    assert spec.backend == Backend.STANDIN
    assert spec.standin_tokens_per_s == 250_000.0
    default = _registry(tmp_path, backend="standin").get("m")
    assert default.standin_tokens_per_s == 0.0


def test_the_shipped_models_file_has_no_stand_in() -> None:
    registry = Registry.load(DEFAULT_MODELS_FILE)
    assert all(spec.backend != Backend.STANDIN for spec in registry.models.values())


def test_the_pipelined_fast_path_writes_what_the_plain_serial_path_writes(
    tiny_text_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fast token path, tokenising ahead, array padding, a window's forward passes started
    before the window before is finished and background driver writes, against the
    tokenizer's own call, no prefetch, each window predicted whole and writes in the loop:
    the same rows, scores equal to the bit."""
    inputs = [
        checked_text_item(f"r{i}", text, 100_000)
        for i, text in enumerate(
            [*TEXTS, *(f"review {i} " + "word " * (i % 23) for i in range(60)), "x " * 900]
        )
    ]
    inputs.append(InputItem(item_id="refused", error="refused at intake"))
    rows = []
    for name, fast in (("pipelined", True), ("serial", False)):
        url = f"sqlite:///{tmp_path / name}.db"
        upgrade(url)
        engine = get_engine(url)
        runner = _standin(tiny_text_model)
        assert runner.fast_encode is not None
        if not fast:
            runner.fast_encode = None
            monkeypatch.setattr(runner, "prefetch", lambda batch: None)
            # Runner's own start_predict: the whole predict at once, nothing left queued.
            monkeypatch.setattr(runner, "start_predict", partial(Runner.start_predict, runner))
        monkeypatch.setattr(scoring, "writes_overlap", lambda _engine, on=fast: on)
        spec = _registry(tiny_text_model, backend="standin").get("m")
        with engine.begin() as conn:
            job = create_job(conn, spec, inputs, chunk_size=len(inputs), job_id="f" * 32)
        run = scoring.score_jobs(
            engine, runner, [scoring.JobItems(job.id, list(enumerate(inputs)))], write_batch_size=8
        )
        assert run.totals[job.id].succeeded == sum(item.error is None for item in inputs) > 60
        columns = [c for c in results.c if c.name not in ("created_at",)]
        with engine.connect() as conn:
            rows.append(conn.execute(select(*columns).order_by(results.c.index)).all())
        runner.close()
        dispose_engines()
    pipelined, serial = rows
    assert len(pipelined) == len(inputs)
    assert pipelined == serial
