"""How a worker process starts, or refuses to: device pinning, unknown and broken models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import redis
from models import write_models_file
from worker_support import producer, run_worker_to_exit, worker_env

from core.queues import model_queue, send_chunks

# Runs the real `bulkscore worker` command line with an import spy: at the first import of an
# ML framework it prints the CUDA variables as they are at that moment and exits with 17.
SPY = """
import importlib.abc, json, os, sys
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "tensorflow", "transformers", "keras", "jax"):
            seen = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                                                   "TOKENIZERS_PARALLELISM")}
            print("SPY " + json.dumps({"module": name, **seen}), flush=True)
            os._exit(17)
        return None
sys.meta_path.insert(0, Spy())
from cli.main import app
app(sys.argv[1:], prog_name="bulkscore")
"""


def spy_on_worker(args: list[str], env: dict[str, str]) -> dict[str, str | None]:
    done = subprocess.run(
        [sys.executable, "-c", SPY, "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 17, f"no framework import reached:\n{done.stdout}\n{done.stderr}"
    line = next(line for line in done.stdout.splitlines() if line.startswith("SPY "))
    return json.loads(line[4:])


def spy_models_file(tmp_path: Path) -> Path:
    # The spy stops the worker at its first framework import, before any weights are read.
    return write_models_file(
        tmp_path / "models.toml",
        {"tiny": {"task": "text-classification", "backend": "transformers", "source": "/none"}},
    )


def test_gpu_is_pinned_before_any_framework_import(tmp_path: Path) -> None:
    env = worker_env(
        f"sqlite:///{tmp_path / 'x.db'}", "redis://127.0.0.1:1/0", spy_models_file(tmp_path)
    )
    env["CUDA_VISIBLE_DEVICES"] = "0,1,2,3"  # what a GPU host might have set already
    seen = spy_on_worker(["--gpu", "3", "--models", "tiny"], env)
    assert seen["CUDA_VISIBLE_DEVICES"] == "3"
    assert seen["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    # Set deliberately before any import: worker_env gives the worker one compute thread,
    # so the tokenizer's own thread pool is off rather than spread onto other cores.
    assert seen["TOKENIZERS_PARALLELISM"] == "false"


def test_no_gpu_hides_every_gpu_before_any_framework_import(tmp_path: Path) -> None:
    env = worker_env(
        f"sqlite:///{tmp_path / 'x.db'}", "redis://127.0.0.1:1/0", spy_models_file(tmp_path)
    )
    env["CUDA_VISIBLE_DEVICES"] = "0"
    seen = spy_on_worker(["--models", "tiny"], env)
    assert seen["CUDA_VISIBLE_DEVICES"] == ""


def test_an_unknown_model_is_refused_with_the_known_names(
    tmp_path: Path, models_file: Path, redis_url: str
) -> None:
    env = worker_env(f"sqlite:///{tmp_path / 'x.db'}", redis_url, models_file)
    code, output = run_worker_to_exit(["--models", "tiny,sentimnet"], env, tmp_path / "w.log")
    assert code == 2, output
    assert "unknown model 'sentimnet'; known models: tiny" in output
    assert "consuming" not in output


def test_a_model_that_fails_to_load_stops_the_worker_before_it_consumes(
    tmp_path: Path, tiny_text_model: Path, redis_url: str
) -> None:
    models = write_models_file(
        tmp_path / "models.toml",
        {
            "tiny": {
                "task": "text-classification",
                "backend": "transformers",
                "source": str(tiny_text_model),
            },
            "broken": {
                "task": "text-classification",
                "backend": "transformers",
                "source": str(tmp_path / "missing-folder"),
            },
        },
    )
    app = producer(redis_url)
    send_chunks(app, "some-job", "broken", [0])
    send_chunks(app, "some-job", "tiny", [0])
    app.close()
    env = worker_env(f"sqlite:///{tmp_path / 'x.db'}", redis_url, models)
    code, output = run_worker_to_exit(["--models", "tiny,broken"], env, tmp_path / "w.log")
    assert code == 1, output
    assert "will not consume" in output and "missing-folder" in output
    assert "consuming" not in output
    client = redis.Redis.from_url(redis_url)
    try:
        # Neither queue was touched: the loaded model's messages wait for a healthy worker.
        assert client.llen(model_queue("broken")) == 1
        assert client.llen(model_queue("tiny")) == 1
    finally:
        client.close()


def test_a_plain_celery_worker_without_models_refuses_to_start(
    tmp_path: Path, models_file: Path, redis_url: str
) -> None:
    env = worker_env(f"sqlite:///{tmp_path / 'x.db'}", redis_url, models_file)
    celery = str(Path(sys.executable).with_name("celery"))
    done = subprocess.run(
        [celery, "-A", "worker.tasks", "worker", "--pool", "solo", "-Q", model_queue("tiny")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "no models are loaded in this process" in done.stdout + done.stderr
    assert "ready" not in done.stdout + done.stderr
