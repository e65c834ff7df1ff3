"""The common tutorial design, as a baseline: one Celery task per text, Redis result backend.

This is what most "serve a model with Celery" tutorials build, kept deliberately as they
write it: the default prefork pool (here ``--concurrency 2``), default prefetch and acks,
the model loaded lazily by the first task each child runs, and every label sent back
through the Redis result backend and collected with ``AsyncResult.get()``. It is a
benchmark baseline, not part of bulkscore (see docs/promise.md for what it gets wrong).

    celery -A tutorial_celery worker --pool prefork --concurrency 2   # from bench/

Configuration comes from ``TUTORIAL_BROKER_URL`` and ``TUTORIAL_MODEL_DIR``, as tutorials
read theirs; :func:`run_tutorial` starts such a worker and times it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery

BROKER_URL = os.environ.get("TUTORIAL_BROKER_URL", "redis://127.0.0.1:6379/14")
MODEL_DIR = os.environ.get("TUTORIAL_MODEL_DIR", "")

app = Celery("tutorial", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])

_classifier: Any = None


@app.task(name="tutorial.classify")
def classify(text: str) -> dict[str, Any]:
    """Classify one text; the first call in each worker child loads the model."""
    global _classifier
    if _classifier is None:
        from transformers import pipeline

        _classifier = pipeline("text-classification", model=MODEL_DIR, device="cpu")
    result: dict[str, Any] = _classifier(text, truncation=True)[0]
    return {"label": result["label"], "score": float(result["score"])}


def run_tutorial(
    model_dir: Path,
    texts: list[str],
    redis_url: str,
    log_path: Path,
    concurrency: int = 2,
    repeat: int = 1,
) -> float:
    """Start the tutorial worker, warm both children, and time ``texts``.

    Returns:
        The seconds of the fastest of ``repeat`` runs.
    """
    env = {**os.environ, "TUTORIAL_BROKER_URL": redis_url, "TUTORIAL_MODEL_DIR": str(model_dir)}
    command = [
        *(sys.executable, "-m", "celery", "-A", "tutorial_celery", "worker"),
        *("--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "WARNING"),
    ]
    client = Celery("tutorial", broker=redis_url, backend=redis_url)
    client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    with log_path.open("wb") as log:
        # Its own process group, so the prefork children are stopped with it.
        worker = subprocess.Popen(
            command,
            cwd=Path(__file__).parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Warm-up, not timed: enough tasks that every child has loaded its model (a
        # long-running tutorial service would have too).
        warm = [client.send_task("tutorial.classify", args=[t]) for t in texts[: 4 * concurrency]]
        for result in warm:
            result.get(timeout=300)
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            pending = [client.send_task("tutorial.classify", args=[t]) for t in texts]
            labels = [result.get(timeout=600) for result in pending]
            runs.append(time.perf_counter() - started)
            assert len(labels) == len(texts)
            print(f"  tutorial run: {len(texts) / runs[-1]:.1f} items/s", flush=True)
        return min(runs)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        client.close()
