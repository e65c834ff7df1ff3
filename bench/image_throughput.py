"""Image throughput, side by side in one run: the model alone, ``bulkscore score``, the loop.

    .venv/bin/python bench/image_throughput.py [--count 200] [--repeats 2]

Inputs: ``../shared/bench/gen_images.py 200 1`` (photo-sized JPEG/PNG, 320x240 to 1920x1440).
Model: ``keras.applications.ResNet50(weights=None)`` (random weights: speed only), the same
weights in all three approaches:

- (a) the model alone on already decoded and preprocessed arrays, ``predict_on_batch`` in
  batches of 32 (warmed up on both batch shapes first): the ceiling;
- (b) the embedded ``bulkscore score`` path: registry spec -> runner ->
  ``engine.scoring.score_items`` on the stored job in a temp SQLite database (decoding in
  the runner's thread pool, overlapped with the model; results written), timed as the
  command times its items/s; (b+) the same plus reading the folder and storing the job
  with its ~110 MB of image bytes (the command's whole run after the model is loaded);
- (c) the tutorial loop: ``load_img(target_size=(224, 224))`` + ``preprocess_input`` +
  ``model.predict`` per image.

Each approach runs ``--repeats`` times, interleaved (the machine is shared); the table shows
the best run of each. Target: (b) >= 0.85x (a) and >= 2x (c).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SHARED_BENCH, Row, print_table, timed

from core.inputs.items import InputItem
from core.models.registry import ModelSpec, Registry

BATCH = 32


def bench_images(count: int, seed: int, workdir: Path) -> Path:
    folder = workdir / f"images_{count}_{seed}"
    if not folder.exists():
        script = str(SHARED_BENCH / "gen_images.py")
        subprocess.run([sys.executable, script, str(count), str(seed), str(folder)], check=True)
    return folder


def model_alone(model: object, arrays: np.ndarray) -> None:
    """(a): preprocessed arrays through ``predict_on_batch``, 32 at a time."""
    for start in range(0, len(arrays), BATCH):
        model.predict_on_batch(arrays[start : start + BATCH])  # type: ignore[attr-defined]


def tutorial_loop(model: object, files: list[Path]) -> None:
    """(c): what most scripts do, one file at a time."""
    import keras
    from keras.applications.resnet50 import preprocess_input

    for path in files:
        image = keras.utils.load_img(path, target_size=(224, 224))
        batch = np.expand_dims(keras.utils.img_to_array(image), 0)
        model.predict(preprocess_input(batch), verbose=0)  # type: ignore[attr-defined]


class Embedded:
    """(b): ``bulkscore score``'s code path for ``spec``, set up once (as the CLI does)."""

    def __init__(self, spec: ModelSpec, folder: Path, workdir: Path) -> None:
        from core.config import get_settings
        from core.db import get_engine
        from core.migrate import upgrade
        from engine.runners import build_runner

        self.settings = get_settings()
        self.folder = folder
        self.spec = spec
        url = f"sqlite:///{workdir / 'bench.db'}"
        upgrade(url)
        self.engine = get_engine(url)
        self.runner = build_runner(self.spec, self.settings)
        started = time.perf_counter()
        self.runner.setup("cpu")
        print(f"  (b) runner setup, incl. warm-up: {time.perf_counter() - started:.1f} s")

    def prepare(self) -> tuple[str, list[tuple[int, InputItem]]]:
        """Read the folder and store the job with its image bytes, as the command does."""
        from core.inputs.images import read_image_inputs
        from core.jobs.lifecycle import create_job, load_items
        from core.jobs.status import JobStatus

        items = read_image_inputs(str(self.folder))
        with self.engine.begin() as conn:
            job = create_job(
                conn, self.spec, items, chunk_size=len(items), status=JobStatus.RUNNING
            )
        with self.engine.connect() as conn:
            return job.id, load_items(conn, job.id, 0, job.total)

    def score(self, job_id: str, indexed: list[tuple[int, InputItem]]) -> None:
        """What the command times as its items/s: decode + model + result writes."""
        from engine.scoring import score_items

        totals = score_items(
            self.engine,
            job_id,
            self.runner,
            indexed,
            write_batch_size=self.settings.write_batch_size,
        )
        assert totals.succeeded == len(indexed), totals

    def timed_runs(self, names: dict[str, str], count: int) -> tuple[Row, Row]:
        """(b) scoring alone and (b+) the whole command, from one run."""
        started = time.perf_counter()
        job_id, indexed = self.prepare()
        prepared = time.perf_counter()
        self.score(job_id, indexed)
        done = time.perf_counter()
        scoring = Row(names["b"], count, done - prepared)
        whole = Row(names["b+"], count, done - started)
        for row in (scoring, whole):
            print(f"  {row.name}: {row.rate:.1f} items/s ({row.seconds:.1f} s)", flush=True)
        return scoring, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras
    from keras.applications.resnet50 import preprocess_input

    from core.inputs.image_decode import decode_image

    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        workdir = Path(tmp)
        folder = bench_images(args.count, args.seed, Path("/tmp"))
        files = sorted(folder.iterdir())
        print(
            f"{len(files)} images from gen_images.py {args.count} {args.seed}; "
            f"ResNet50(weights=None), batch {BATCH}",
            flush=True,
        )

        keras.utils.set_random_seed(0)
        model = keras.applications.ResNet50(weights=None)
        model_file = workdir / "resnet50-random.keras"
        model.save(model_file)

        arrays = np.stack([decode_image(path.read_bytes(), 224) for path in files])
        inputs = np.asarray(preprocess_input(arrays.astype(np.float32)))
        for rows in {BATCH, len(inputs) % BATCH or BATCH}:  # trace both batch shapes first
            model.predict_on_batch(inputs[:rows])
        model.predict(inputs[:1], verbose=0)

        registry = Registry.from_mapping(
            {
                "models": {
                    "resnet50-random": {
                        "task": "image-classification",
                        "backend": "keras",
                        "source": str(model_file),
                        "max_batch_size": BATCH,
                    }
                }
            },
            base_dir=workdir,
        )
        embedded = Embedded(registry.get("resnet50-random"), folder, workdir)
        names = {
            "a": "(a) model alone, decoded arrays, batch 32",
            "b": "(b) bulkscore score: scoring (decode + model + writes)",
            "b+": "(b+) bulkscore score: + reading files, storing the job",
            "c": "(c) tutorial loop: load_img + predict per image",
        }
        runs: dict[str, list[Row]] = {key: [] for key in names}
        for _ in range(args.repeats):
            runs["a"].append(timed(names["a"], len(files), lambda: model_alone(model, inputs)))
            scoring, whole = embedded.timed_runs(names, len(files))
            runs["b"].append(scoring)
            runs["b+"].append(whole)
            runs["c"].append(timed(names["c"], len(files), lambda: tutorial_loop(model, files)))
        best = [max(runs[key], key=lambda row: row.rate) for key in names]
        print_table(
            f"Image throughput, best of {args.repeats} (images/s)",
            best,
            {"(a)": names["a"], "(c)": names["c"]},
        )


if __name__ == "__main__":
    main()
