"""imagenet-lite throughput, side by side in one run: the model alone vs ``bulkscore score``.

    .venv/bin/python bench/imagenet_lite.py [--count 64] [--repeats 2]

Inputs: ``../shared/bench/gen_images.py COUNT 1`` (photo-sized JPEG/PNG, 320x240 to
1920x1440). Model: the shipped ``imagenet-lite`` (EfficientNet-Lite0, its real ImageNet
weights), on CPU, fp32, batches of its ``max_batch_size``; the same loaded runner serves
every row:

- (a) the model alone on already decoded and cropped uint8 arrays: the runner's
  ``probabilities`` (normalisation, forward pass in ONNX Runtime as the runner runs it on
  CPU, softmax), a batch at a time: the ceiling;
- (a-torch) the same arrays through the same network in PyTorch (eager, fp32): what the
  runner would do on CPU without ONNX Runtime (and what it does on a GPU);
- (b) the embedded ``bulkscore score`` path: ``engine.scoring.score_items`` on the stored
  job in a temp SQLite database (decoding in the runner's thread pool, overlapped with the
  model; results written), timed as the command times its items/s; (b+) the same plus
  reading the folder and storing the job with its image bytes;
- (d) decoding alone: the runner's ``decode`` (safe decode, shorter side to 256, centre
  crop) on the decode pool's threads, no model: what (b) overlaps with (a).

Each approach runs ``--repeats`` times, interleaved (the machine is shared); the table shows
the best run of each. The CPU flags that decide PyTorch's kernels are printed first.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import Row, print_table, timed
from image_throughput import Embedded, bench_images

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_flags() -> str:
    """Which of the vector extensions that PyTorch's CPU kernels use this CPU has."""
    pattern = "\\|".join(CPU_FLAGS)
    found = subprocess.run(
        ["grep", "-o", "-w", pattern, "/proc/cpuinfo"], capture_output=True, text=True
    ).stdout.split()
    return ", ".join(sorted(set(found))) or "none of " + ", ".join(CPU_FLAGS)


def model_alone(runner: Any, arrays: np.ndarray, batch: int) -> None:
    """(a): decoded arrays through the model, a batch at a time."""
    for start in range(0, len(arrays), batch):
        runner.probabilities(arrays[start : start + batch])


def torch_alone(runner: Any, arrays: np.ndarray, batch: int) -> None:
    """(a-torch): decoded arrays through the network in PyTorch, a batch at a time."""
    for start in range(0, len(arrays), batch):
        runner.torch_outputs(arrays[start : start + batch])


def decode_alone(runner: Any, files: list[Path]) -> None:
    """(d): every file through the runner's decode, on its pool's threads."""
    datas = [path.read_bytes() for path in files]
    for decoded in runner.pool.batches(datas, runner.max_batch_size, runner.decode):
        assert all(error is None for error in decoded.errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from core.config import DEFAULT_MODELS_FILE
    from core.models.registry import Registry

    print(f"CPU flags: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    spec = Registry.load(DEFAULT_MODELS_FILE).get("imagenet-lite")
    with tempfile.TemporaryDirectory(prefix="bench-imagenet-lite-") as tmp:
        folder = bench_images(args.count, args.seed, Path("/tmp"))
        files = sorted(folder.iterdir())
        embedded = Embedded(spec, folder, Path(tmp))
        runner: Any = embedded.runner  # the EfficientNet-Lite runner: decode, probabilities
        batch = runner.max_batch_size
        print(
            f"{len(files)} images from gen_images.py {args.count} {args.seed}; "
            f"{spec.name} ({spec.source}), batch {batch}, "
            f"{runner.pool.threads} decode threads",
            flush=True,
        )
        arrays = np.stack([runner.decode(path.read_bytes()) for path in files])
        names = {
            "a": f"(a) model alone (ONNX Runtime), decoded arrays, batch {batch}",
            "t": f"(a-torch) model alone in PyTorch eager, decoded arrays, batch {batch}",
            "b": "(b) bulkscore score: scoring (decode + model + writes)",
            "b+": "(b+) bulkscore score: + reading files, storing the job",
            "d": "(d) decoding alone (decode pool, no model)",
        }
        runs: dict[str, list[Row]] = {key: [] for key in names}
        for _ in range(args.repeats):
            runs["a"].append(
                timed(names["a"], len(files), lambda: model_alone(runner, arrays, batch))
            )
            runs["t"].append(
                timed(names["t"], len(files), lambda: torch_alone(runner, arrays, batch))
            )
            scoring, whole = embedded.timed_runs(names, len(files))
            runs["b"].append(scoring)
            runs["b+"].append(whole)
            runs["d"].append(timed(names["d"], len(files), lambda: decode_alone(runner, files)))
        best = [max(runs[key], key=lambda row: row.rate) for key in names]
        print_table(
            f"imagenet-lite throughput, best of {args.repeats} (images/s)",
            best,
            {"(a)": names["a"], "(a-torch)": names["t"]},
        )


if __name__ == "__main__":
    main()
