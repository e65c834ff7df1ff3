"""GPU path check for a lent GPU machine: pinning, fp16/bf16 text, channels-last images.

    python bench/gpu_check.py --carry .devcarry --out "$OUT"

Prints one table of items/s. Rows: the DistilBERT-base shaped text model alone (pre-tokenized,
length-sorted batches) in fp32/fp16/bf16; the same through the runner and ``score_items``
into SQLite (tokenizing, batching, result writes included); through a real Celery worker
(Redis + ``worker.main.run_worker``) when a ``redis-server`` is available; and a ResNet-50
shaped transformers image classifier alone (channels-last, fp16) and through the runner on
generated JPEG/PNG files. Random weights: speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ROWS: list[tuple[str, float, str]] = []
DEVICE = "cuda"  # --device cpu makes a quick local dry run of the script possible


def row(name: str, items: int, seconds: float, note: str = "") -> None:
    rate = items / seconds
    ROWS.append((name, rate, note))
    print(f"  {name}: {rate:,.0f} items/s ({items} in {seconds:.2f}s) {note}", flush=True)


def section(title: str, work: Callable[[], None]) -> None:
    print(f"== {title}", flush=True)
    try:
        work()
    except Exception:  # one failing section must not lose the others' figures
        traceback.print_exc()
        ROWS.append((f"{title}: FAILED", 0.0, ""))


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def check_pinning() -> None:
    code = (
        "from worker.pinning import pin_device; d = pin_device(0); import torch; "
        "print(d, torch.cuda.device_count(), __import__('os').environ['CUDA_VISIBLE_DEVICES'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    print("  pin_device(0) ->", out.stdout.strip(), out.stderr.strip()[-300:])


def build_text_model(folder: Path, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import (
        BertTokenizerFast,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    torch.manual_seed(0)
    tokenizer = BertTokenizerFast.from_pretrained(str(tokenizer_dir))
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, num_labels=2)
    DistilBertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def texts(carry: Path, count: int, workdir: Path) -> list[str]:
    path = workdir / "texts.jsonl"
    subprocess.run(
        [sys.executable, str(carry / "gen_texts.py"), str(count), "7", str(path)], check=True
    )
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def text_model_alone(model_dir: Path, corpus: list[str]) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from engine.batching import plan_batches

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoded = tokenizer(corpus, truncation=True, max_length=512)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    for dtype, budget, size in [
        (torch.float32, 65536, 512),
        (torch.float16, 65536, 512),
        (torch.bfloat16, 65536, 512),
        (torch.float16, 16384, 256),
        (torch.float16, 131072, 1024),
        (torch.float16, 262144, 2048),
    ]:
        model = (
            AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), dtype=dtype, attn_implementation="sdpa"
            )
            .to(DEVICE)
            .eval()
        )
        batches = []
        for batch in plan_batches(lengths, size, budget):
            feats = tokenizer.pad(
                {
                    "input_ids": [encoded["input_ids"][i] for i in batch],
                    "attention_mask": [encoded["attention_mask"][i] for i in batch],
                },
                return_tensors="pt",
            )
            batches.append({k: v.to(DEVICE) for k, v in feats.items()})
        with torch.inference_mode():
            for features in batches[:3]:
                model(**features)
            sync()
            started = time.perf_counter()
            for features in batches:
                model(**features).logits.float().cpu()
            sync()
        row(
            f"text model alone {str(dtype)[6:]} budget={budget} bs<={size}",
            len(corpus),
            time.perf_counter() - started,
            f"{len(batches)} batches",
        )
        del model
        torch.cuda.empty_cache()


def models_file(workdir: Path, text_dir: Path, image_dir: Path, precision: str) -> Path:
    path = workdir / f"models-{precision}.toml"
    path.write_text(
        f'[models.bench-text]\ntask = "text-classification"\nbackend = "transformers"\n'
        f'source = "{text_dir}"\nprecision = "{precision}"\n\n'
        f'[models.bench-image]\ntask = "image-classification"\nbackend = "transformers"\n'
        f'source = "{image_dir}"\nprecision = "{precision}"\n'
    )
    return path


def through_runner(model_name: str, models: Path, inputs: list, label: str, workdir: Path) -> None:
    from core.config import Settings
    from core.db import get_engine
    from core.inputs.items import InputItem
    from core.jobs.lifecycle import create_job, load_items
    from core.jobs.status import JobStatus
    from core.migrate import upgrade
    from core.models.registry import Registry
    from engine.runners import build_runner
    from engine.scoring import score_items

    settings = Settings(models=models, database_url=f"sqlite:///{workdir / (label + '.db')}")
    spec = Registry.load(models).get(model_name)
    runner = build_runner(spec, settings)
    runner.setup(DEVICE)
    upgrade(settings.database_url)
    engine = get_engine(settings.database_url)
    items = [
        InputItem(item_id=str(i), text=v)
        if isinstance(v, str)
        else InputItem(item_id=str(i), data=v)
        for i, v in enumerate(inputs)
    ]
    with engine.begin() as conn:
        job = create_job(conn, spec, items, chunk_size=len(items), status=JobStatus.RUNNING)
    with engine.connect() as conn:
        indexed = load_items(conn, job.id, 0, job.total)
    started = time.perf_counter()
    totals = score_items(engine, job.id, runner, indexed, write_batch_size=4096)
    row(label, len(items), time.perf_counter() - started, f"ok={totals.succeeded}")


def through_celery_worker(carry: Path, models: Path, corpus: list[str], workdir: Path) -> None:
    from celery import Celery

    from core.config import Settings
    from core.db import get_engine
    from core.inputs.items import InputItem
    from core.jobs.lifecycle import create_job, get_job, list_chunks
    from core.migrate import upgrade
    from core.models.registry import Registry
    from core.queues import SCORE_CHUNK_TASK, celery_settings, model_queue

    env = dict(os.environ, LD_LIBRARY_PATH=str(carry / "lib"))
    redis = subprocess.Popen(
        [str(carry / "redis-server"), "--port", "6399", "--save", "", "--appendonly", "no"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    time.sleep(1.0)
    url = f"sqlite:///{workdir / 'worker.db'}"
    broker = "redis://127.0.0.1:6399/0"
    upgrade(url)
    wenv = dict(
        os.environ,
        BULKSCORE_DATABASE_URL=url,
        BULKSCORE_BROKER_URL=broker,
        BULKSCORE_MODELS=str(models),
        BULKSCORE_CHUNK_SIZE="2048",
    )
    gpu = 0 if DEVICE == "cuda" else None
    code = f"from worker.main import run_worker; run_worker({gpu}, 'bench-text')"
    log = (workdir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=wenv, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 120
        while b"consuming" not in (workdir / "worker.log").read_bytes():
            if worker.poll() is not None or time.time() > deadline:
                raise RuntimeError((workdir / "worker.log").read_text()[-3000:])
            time.sleep(0.2)
        spec = Registry.load(models).get("bench-text")
        engine = get_engine(url)
        app = Celery("p", set_as_current=False)
        app.conf.update(celery_settings(Settings(broker_url=broker)))
        items = [InputItem(item_id=str(i), text=t) for i, t in enumerate(corpus)]
        started = time.perf_counter()
        with engine.begin() as conn:
            job = create_job(conn, spec, items, chunk_size=2048)
            chunks = list_chunks(conn, job.id)
        for chunk in chunks:
            app.send_task(
                SCORE_CHUNK_TASK, args=[job.id, chunk.index], queue=model_queue("bench-text")
            )
        while True:
            with engine.connect() as conn:
                current = get_job(conn, job.id)
            if current is not None and current.status.is_final:
                break
            if time.perf_counter() - started > 240:
                raise RuntimeError("worker job did not finish")
            time.sleep(0.05)
        row(
            "text through a Celery worker (Redis, SQLite) fp16",
            len(items),
            time.perf_counter() - started,
            current.status.value,
        )
    finally:
        worker.terminate()
        worker.wait(20)
        redis.terminate()


def image_model_alone(image_dir: Path, size: int, reps: int) -> None:
    import torch
    from transformers import AutoModelForImageClassification

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        model = (
            AutoModelForImageClassification.from_pretrained(str(image_dir), dtype=dtype)
            .to(DEVICE)
            .eval()
        )
        model.to(memory_format=torch.channels_last)
        batch = torch.randn(size, 3, 224, 224, device=DEVICE, dtype=dtype).contiguous(
            memory_format=torch.channels_last
        )
        with torch.inference_mode():
            for _ in range(3):
                model(pixel_values=batch)
            sync()
            started = time.perf_counter()
            for _ in range(reps):
                model(pixel_values=batch).logits.float().cpu()
            sync()
        row(
            f"image model alone {str(dtype)[6:]} channels-last bs={size}",
            reps * size,
            time.perf_counter() - started,
        )


def build_image_model(folder: Path) -> Path:
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    ResNetForImageClassification(ResNetConfig(num_labels=1000)).save_pretrained(str(folder))
    ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(str(folder))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--carry", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--image-batch", type=int, default=256)
    parser.add_argument("--image-reps", type=int, default=20)
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    import torch

    print(
        "torch",
        torch.__version__,
        "cuda",
        torch.cuda.is_available(),
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
        "cpus",
        os.cpu_count(),
    )
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    carry = args.carry.resolve()
    section("pinning", check_pinning)
    text_dir = build_text_model(workdir / "text", carry / "tok")
    image_dir = build_image_model(workdir / "image")
    corpus = texts(carry, args.texts, workdir)
    section("text model alone", lambda: text_model_alone(text_dir, corpus))
    for precision in ("fp16", "bf16"):
        models = models_file(workdir, text_dir, image_dir, precision)
        section(
            f"text runner {precision}",
            lambda m=models, p=precision: through_runner(
                "bench-text", m, corpus, f"text runner + score_items -> SQLite {p}", workdir
            ),
        )
    models16 = models_file(workdir, text_dir, image_dir, "fp16")
    if not args.skip_worker:
        section("celery worker", lambda: through_celery_worker(carry, models16, corpus, workdir))
    section(
        "image model alone", lambda: image_model_alone(image_dir, args.image_batch, args.image_reps)
    )
    img_dir = workdir / "imgs"
    subprocess.run(
        [sys.executable, str(carry / "gen_images.py"), str(args.images), "1", str(img_dir)],
        check=True,
    )
    images = [p.read_bytes() for p in sorted(img_dir.iterdir()) if p.is_file()]
    section(
        "image runner fp16",
        lambda: through_runner(
            "bench-image",
            models16,
            images,
            "image runner (decode + model) + score_items fp16",
            workdir,
        ),
    )
    print("\n| path | items/s | note |\n|---|---|---|")
    for name, rate, note in ROWS:
        print(f"| {name} | {rate:,.0f} | {note} |")
    (args.out / "gpu_table.json").write_text(json.dumps(ROWS))


if __name__ == "__main__":
    main()
