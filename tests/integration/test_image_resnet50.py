"""The full ResNet50 architecture (random weights) through the Keras runner (slow: ~100 MB).

It stands in for ``ResNet50(weights="imagenet")``: the same graph, loaded the way an offline
user loads the real weights (a weights file in ``source``: the legacy HDF5 file Keras
downloads, or a Keras 3 ``.weights.h5``), checked against the tutorial
path (``load_img`` + ``preprocess_input`` + the model) on the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from image_support import encode, photo

from core.config import Settings
from core.models.registry import ModelSpec
from engine.runners import build_runner
from engine.runners.keras_image import KerasImageRunner, imagenet_labels


@pytest.fixture(scope="module", params=["keras-download", "keras3-weights"])
def resnet50_weights(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A ResNet50 weights file as Keras downloads it (legacy HDF5) or as Keras 3 saves it."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    folder = tmp_path_factory.mktemp("resnet50")
    if request.param == "keras-download":
        path = folder / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
        with h5py.File(path, "w") as handle:
            legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    else:
        path = folder / "resnet50.weights.h5"
        model.save_weights(path)
    return path


def test_resnet50_through_the_runner_equals_the_tutorial_path(
    resnet50_weights: Path, tmp_path: Path
) -> None:
    import keras
    from keras.applications.resnet50 import preprocess_input

    spec = ModelSpec(
        name="resnet50",
        task="image-classification",  # type: ignore[arg-type]
        backend="keras",  # type: ignore[arg-type]
        source=str(resnet50_weights),
        max_batch_size=2,
    )
    runner = build_runner(spec, Settings(image_decode_threads=2))
    assert isinstance(runner, KerasImageRunner)
    runner.setup("cpu")
    assert runner.image_size == 224 and runner.labels == imagenet_labels()

    files = []
    for i in range(3):  # PNGs: no JPEG draft, so the tutorial path sees the same pixels
        files.append(tmp_path / f"p{i}.png")
        files[-1].write_bytes(encode(photo(320 + 40 * i, 240, seed=i), "PNG"))
    predictions = runner.predict([path.read_bytes() for path in files] + [b"not an image"])
    assert not predictions[-1].ok

    model = keras.applications.ResNet50(weights=str(resnet50_weights))
    batch = np.stack(
        [
            keras.utils.img_to_array(
                keras.utils.load_img(path, target_size=(224, 224), interpolation="bilinear")
            )
            for path in files
        ]
    )
    expected = model.predict_on_batch(preprocess_input(batch))
    for row, prediction in zip(expected, predictions[:3], strict=True):
        best = row.argsort()[-5:][::-1]
        assert prediction.score == pytest.approx(float(row[best[0]]), rel=1e-3)
        assert prediction.label == imagenet_labels()[best[0]]
        assert [label for label, _ in prediction.top_k] == [imagenet_labels()[i] for i in best]
    runner.close()
