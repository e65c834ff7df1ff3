"""Fitting heads, the hold-out split, the evaluation, and reading labelled data (no models)."""

from __future__ import annotations

import io
import re
import tracemalloc
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from training_support import (
    WordBackbone,
    intent_rows,
    labelled_csv,
    lying_zip,
    stripes_and_dots,
    write_label_folders,
    zip_label_folders,
)

from core.inputs.items import InputItem
from core.training.data import (
    MIN_EXAMPLES_PER_LABEL,
    LabelledExamples,
    TrainingDataError,
    check_examples,
    check_label,
    parse_labelled_csv,
    parse_labelled_zip,
    read_labelled_folder,
)
from engine.runners.base import ModelLoadError
from engine.runners.heads import head_bytes, read_head
from engine.training import fit_head, split_holdout, train

MB = 1024 * 1024


def clusters(
    per_label: int, labels: Sequence[str], dim: int = 8, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Well separated Gaussian clusters, one per label, far from the origin (unscaled)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (len(labels), dim)) + 50
    features = np.concatenate([rng.normal(c, 0.5, (per_label, dim)) for c in centres])
    return features.astype(np.float32), [label for label in labels for _ in range(per_label)]


class FailingImages:
    """A fake image backbone whose ``features`` fail the inputs listed in ``bad``."""

    def __init__(self, bad: set[bytes]) -> None:
        self.bad = bad

    def features(self, batch: Sequence[Any], progress: Any = None) -> tuple[np.ndarray, list]:
        vectors = np.array([[float(b"stripes" in data), 1.0] for data in batch], np.float32)
        vectors += np.random.default_rng(0).normal(0, 0.01, vectors.shape).astype(np.float32)
        errors = ["corrupt image" if data in self.bad else None for data in batch]
        return vectors, errors


def test_a_head_on_separable_features_is_exact_and_its_evaluation_adds_up() -> None:
    features, labels = clusters(10, ["question", "complaint", "praise"])
    head = fit_head(features, labels, holdout_fraction=0.3, seed=0)
    metrics = head.metrics
    assert head.labels == ["complaint", "praise", "question"]  # sorted: stable row order
    assert head.weight.shape == (3, 8) and head.bias.shape == (3,)
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0
    assert metrics["train_size"] + metrics["holdout_size"] == 30
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == metrics["holdout_size"]
    assert np.array_equal(matrix, np.diag(np.diag(matrix)))
    supports = [metrics["per_label"][label]["support"] for label in head.labels]
    assert supports == matrix.sum(axis=1).tolist() and min(supports) >= 1
    # Features are far from the origin and unscaled: the folded scaler must make the stored
    # layer classify raw features, everywhere, not only on the hold-out.
    predicted = np.argmax(features @ head.weight.T + head.bias, axis=1)
    assert [head.labels[p] for p in predicted] == labels


def test_the_evaluation_counts_mistakes() -> None:
    features, labels = clusters(10, ["a", "b"])
    rng = np.random.default_rng(1)
    noisy = features + rng.normal(0, 40, features.shape).astype(np.float32)  # overlap
    head = fit_head(noisy, labels, holdout_fraction=0.4, seed=0)
    matrix = np.array(head.metrics["confusion_matrix"])
    assert head.metrics["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert head.metrics["majority_baseline"] == pytest.approx(0.5)


def test_the_binary_head_gives_the_probabilities_of_the_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features, labels = clusters(12, ["neg", "pos"], seed=3)
    features += np.random.default_rng(2).normal(0, 8, features.shape).astype(np.float32)
    head = fit_head(features, labels, holdout_fraction=0.25, seed=0, refit=False)
    targets = np.array([label == "pos" for label in labels], dtype=int)
    train_positions, _ = split_holdout(targets, 0.25, 0)
    scaler = StandardScaler().fit(features[train_positions])
    reference = LogisticRegression(C=head.metrics["C"], max_iter=5000).fit(
        scaler.transform(features[train_positions]), targets[train_positions]
    )
    logits = features @ head.weight.T + head.bias
    ours = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ours, reference.predict_proba(scaler.transform(features)), atol=1e-4)


def test_the_stored_head_is_refitted_on_every_example_after_its_evaluation() -> None:
    features, labels = clusters(10, ["a", "b", "c"], seed=4)
    features += np.random.default_rng(5).normal(0, 6, features.shape).astype(np.float32)
    evaluated = fit_head(features, labels, holdout_fraction=0.3, seed=0, refit=False)
    refitted = fit_head(features, labels, holdout_fraction=0.3, seed=0)
    assert refitted.metrics["refit_on_all"] and not evaluated.metrics["refit_on_all"]
    # The same evaluation (of the head fitted without the hold-out) ...
    for key in ("accuracy", "confusion_matrix", "per_label", "C", "train_size"):
        assert refitted.metrics[key] == evaluated.metrics[key], key
    # ... but another layer: one that learnt from the hold-out too.
    assert not np.allclose(refitted.weight, evaluated.weight)
    targets = np.array([["a", "b", "c"].index(label) for label in labels])
    _, holdout = split_holdout(targets, 0.3, 0)
    evaluated_on_holdout = np.argmax(features[holdout] @ evaluated.weight.T + evaluated.bias, 1)
    assert np.mean(evaluated_on_holdout == targets[holdout]) == pytest.approx(
        evaluated.metrics["accuracy"]
    )


def test_the_hold_out_is_stratified_and_seeded() -> None:
    targets = np.array([0] * 30 + [1] * 6 + [2] * 5)
    train_a, holdout_a = split_holdout(targets, 0.2, seed=7)
    train_b, holdout_b = split_holdout(targets, 0.2, seed=7)
    _, holdout_c = split_holdout(targets, 0.2, seed=8)
    assert np.array_equal(holdout_a, holdout_b) and np.array_equal(train_a, train_b)
    assert not np.array_equal(holdout_a, holdout_c)
    assert set(train_a).isdisjoint(holdout_a) and len(train_a) + len(holdout_a) == 41
    assert set(targets[holdout_a]) == {0, 1, 2} and set(targets[train_a]) == {0, 1, 2}


def examples_of(counts: dict[str, int]) -> LabelledExamples:
    examples = LabelledExamples()
    for label, n in counts.items():
        for i in range(n):
            examples.add(InputItem(item_id=f"{label}{i}", text=f"{label} {i}"), label)
    return examples


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"spam": 20}, "only one label ('spam'): a classifier needs examples of at least two"),
        (
            {"a": 9, "b": 3, "c": 4},
            "too few examples: 'b' has 3, 'c' has 4; each label needs at least 5",
        ),
        ({}, "no usable examples"),
    ],
)
def test_unusable_label_counts_are_explained(counts: dict[str, int], message: str) -> None:
    with pytest.raises(TrainingDataError, match=re.escape(message)):
        check_examples(examples_of(counts))


def test_enough_examples_pass_with_their_counts() -> None:
    assert check_examples(examples_of({"a": 5, "b": 7})) == {"a": 5, "b": 7}
    assert MIN_EXAMPLES_PER_LABEL == 5


def test_csv_needs_text_and_label_and_ignores_other_columns(tmp_path: Path) -> None:
    raw = b"text,label,split\nGreat,positive,train\nBad,negative,test\n"
    examples = parse_labelled_csv(raw, max_chars=100)
    assert [item.text for item in examples.items] == ["Great", "Bad"]
    assert examples.labels == ["positive", "negative"]
    with pytest.raises(TrainingDataError, match='"text" and "label" columns'):
        parse_labelled_csv(b"text,category\nx,y\n", max_chars=100)
    with pytest.raises(TrainingDataError, match="row 2: empty label"):
        parse_labelled_csv(b"text,label\nfine,a\nno label, \n", max_chars=100)
    with pytest.raises(TrainingDataError, match="row 1: empty text"):
        parse_labelled_csv(b"text,label\n ,a\n", max_chars=100)
    with pytest.raises(TrainingDataError, match="not valid UTF-8"):
        parse_labelled_csv(b"text,label\n\xff,a\n", max_chars=100)
    path = labelled_csv(tmp_path / "rows.csv", intent_rows(5))
    assert len(parse_labelled_csv(path.read_bytes(), max_chars=100).items) == 15


def test_a_zip_of_label_folders_inside_a_top_folder(tmp_path: Path) -> None:
    examples = stripes_and_dots(3)
    raw = zip_label_folders(examples, top="photos")
    parsed = parse_labelled_zip(raw, max_image_bytes=MB, max_files=100, max_total_bytes=10 * MB)
    assert sorted(parsed.labels) == ["dots"] * 3 + ["stripes"] * 3
    assert {item.item_id.split("/")[0] for item in parsed.items} == {"dots", "stripes"}
    assert all(item.error is None and item.data for item in parsed.items)
    # Without the top folder, with a macOS resource folder and a file that is no image.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, name, data in examples:
            archive.writestr(f"{label}/{name}", data)
        archive.writestr("__MACOSX/dots/._x.png", b"junk")
        archive.writestr("dots/notes.txt", b"not an image")
    parsed = parse_labelled_zip(
        buffer.getvalue(), max_image_bytes=MB, max_files=100, max_total_bytes=10 * MB
    )
    assert len(parsed.items) == 7
    assert parsed.skipped == [("dots/notes.txt", parsed.skipped[0][1])]
    assert "not a supported image" in parsed.skipped[0][1]
    assert parsed.label_counts() == {"dots": 3, "stripes": 3}


def test_malformed_and_oversized_zips_are_refused() -> None:
    raw = zip_label_folders(stripes_and_dots(2), top="photos")
    with pytest.raises(TrainingDataError, match="unpacks to"):
        parse_labelled_zip(raw, max_image_bytes=MB, max_files=100, max_total_bytes=100)
    with pytest.raises(TrainingDataError, match="the limit is 3"):
        parse_labelled_zip(raw, max_image_bytes=MB, max_files=3, max_total_bytes=10 * MB)
    with pytest.raises(TrainingDataError, match="not a valid zip"):
        parse_labelled_zip(b"PK nope", max_image_bytes=MB, max_files=9, max_total_bytes=MB)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("loose.png", b"x")
        archive.writestr("dots/a.png", b"x")
    with pytest.raises(TrainingDataError, match=r"loose.png: expected <label>/<image>"):
        parse_labelled_zip(buffer.getvalue(), max_image_bytes=MB, max_files=9, max_total_bytes=MB)


def peak_bytes_while(action: Any) -> int:
    """The most memory Python held while ``action()`` ran (its exceptions are swallowed)."""
    tracemalloc.start()
    try:
        action()
    except TrainingDataError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_a_zip_member_is_inflated_under_a_running_limit_not_its_declared_size() -> None:
    # 50 MB of zeros (50 KB deflated) declaring 100 bytes: zipfile used to inflate it all.
    bomb = lying_zip({"photos/cat/a.png": 50 * MB, "photos/dog/b.png": 10}, declared=100)
    with pytest.raises(TrainingDataError, match=r"photos/cat/a\.png: cannot be read"):
        parse_labelled_zip(bomb, max_image_bytes=MB, max_files=10, max_total_bytes=10 * MB)

    def parse() -> None:
        parse_labelled_zip(bomb, max_image_bytes=MB, max_files=10, max_total_bytes=10 * MB)

    assert peak_bytes_while(parse) < MB


def test_a_member_over_the_image_limit_is_skipped_after_reading_only_the_limit() -> None:
    # Declared honestly this time; the limit is what stops the read, not the declaration.
    honest = lying_zip({"photos/cat/big.png": 20 * MB}, declared=20 * MB)
    with zipfile.ZipFile(io.BytesIO(honest)) as archive:
        assert archive.infolist()[0].file_size == 20 * MB
    parsed: list[LabelledExamples] = []

    def parse() -> None:
        parsed.append(parse_labelled_zip(honest, 2 * MB, max_files=10, max_total_bytes=100 * MB))

    assert peak_bytes_while(parse) < 4 * MB
    assert parsed[0].skipped == [("cat/big.png", f"image is over the limit of {2 * MB} bytes")]


def test_a_member_declaring_more_than_it_holds_is_read_for_what_it_holds() -> None:
    small = lying_zip({"photos/cat/a.png": 10, "photos/dog/b.png": 10}, declared=100 * MB)
    parsed = parse_labelled_zip(small, max_image_bytes=MB, max_files=10, max_total_bytes=MB)
    # Read, not refused for its declared size: its 10 zero bytes are simply not an image.
    assert [(ident, error.split(" (")[0]) for ident, error in parsed.skipped] == [
        ("cat/a.png", "not a supported image"),
        ("dog/b.png", "not a supported image"),
    ]


def test_what_the_whole_zip_inflates_to_is_counted_as_it_is_read() -> None:
    members = {f"photos/{label}/{i}.png": 3 * MB for label in ("a", "b") for i in range(3)}
    # Each member is under the image limit and declared truthfully; 18 MB in all.
    many = lying_zip(members, declared=3 * MB)
    with pytest.raises(TrainingDataError, match="unpacks to more than 5242880 bytes"):
        parse_labelled_zip(many, max_image_bytes=4 * MB, max_files=10, max_total_bytes=5 * MB)


def test_only_stored_and_deflated_members_are_read() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_BZIP2) as archive:
        for label, name, data in stripes_and_dots(2):
            archive.writestr(f"{label}/{name}", data)
    with pytest.raises(TrainingDataError, match="zip the images with deflate"):
        parse_labelled_zip(buffer.getvalue(), max_image_bytes=MB, max_files=9, max_total_bytes=MB)


@pytest.mark.parametrize(
    ("label", "problem"),
    [("a\x00b", "contains a NUL character"), ("\udcff", "contains a lone surrogate")],
)
def test_labels_must_be_storable_text(label: str, problem: str) -> None:
    with pytest.raises(TrainingDataError, match=f"row 3: the label {problem}"):
        check_label(label, "row 3")


def test_a_folder_holds_one_sub_folder_per_label(tmp_path: Path) -> None:
    root = write_label_folders(tmp_path / "photos", stripes_and_dots(2))
    (root / ".DS_Store").write_bytes(b"hidden files are ignored")
    parsed = read_labelled_folder(root, max_image_bytes=MB)
    assert parsed.label_counts() == {"dots": 2, "stripes": 2}
    assert parsed.items[0].item_id == "dots/dots-000.png"
    (root / "stray.png").write_bytes(b"x")
    with pytest.raises(TrainingDataError, match=r"stray\.png not in a label folder"):
        read_labelled_folder(root, max_image_bytes=MB)


def test_the_head_file_round_trips_and_refuses_garbage() -> None:
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    bias = np.array([0.5, -0.5], dtype=np.float32)
    data = head_bytes(weight, bias, ["no", "yes"], {"base": "minilm"})
    read_weight, read_bias, labels = read_head(data)
    assert labels == ["no", "yes"]
    np.testing.assert_array_equal(read_weight, weight)
    np.testing.assert_array_equal(read_bias, bias)
    with pytest.raises(ModelLoadError, match="not a head file"):
        read_head(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match="malformed head"):
        read_head(head_bytes(weight, bias, ["only one"], {}))


def test_train_uses_the_backbone_once_and_reports_its_progress() -> None:
    rows = intent_rows(8)
    examples = LabelledExamples()
    for text, label in rows:
        examples.add(InputItem(item_id=text, text=text), label)
    backbone = WordBackbone(rows)
    seen: list[int] = []
    outcome = train(backbone, examples, holdout_fraction=0.25, seed=0, progress=seen.append)
    assert backbone.calls == 1 and sum(seen) == len(rows)
    assert outcome.used == 24 and outcome.skipped == 0
    assert outcome.head.metrics["accuracy"] == 1.0
    assert outcome.head.labels == ["complaint", "praise", "question"]


def test_images_the_backbone_cannot_read_are_skipped_then_counted_again() -> None:
    images = stripes_and_dots(6)
    examples = LabelledExamples()
    for label, name, data in images:
        examples.add(InputItem(item_id=name, data=(label.encode() + data)), label)
    bad = {examples.items[0].data or b""}  # one stripes image fails to decode
    outcome = train(FailingImages(bad), examples, holdout_fraction=0.25, seed=0)
    assert outcome.used == 11 and outcome.skipped == 1
    assert outcome.head.metrics["skipped_examples"] == [["stripes-000.png", "corrupt image"]]
    two_bad = bad | {examples.items[2].data or b""}  # stripes drops to 4 usable: too few
    with pytest.raises(TrainingDataError, match="'stripes' has 4"):
        train(FailingImages(two_bad), examples, holdout_fraction=0.25, seed=0)
