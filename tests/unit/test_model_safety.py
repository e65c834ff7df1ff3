"""Nothing loads code: models only from safetensors (or Keras safe mode), Celery only JSON."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.models.registry import Backend, ModelSpec, Task
from core.queues import celery_settings
from engine.runners.base import ModelLoadError
from engine.runners.hub import load_pretrained

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = [ROOT / package for package in ("core", "engine", "api", "worker", "cli")]


def spec_for(folder: Path) -> ModelSpec:
    return ModelSpec(
        name="local",
        task=Task.TEXT_CLASSIFICATION,
        backend=Backend.TRANSFORMERS,
        source=str(folder),
    )


def test_remote_code_is_never_trusted_whatever_the_caller_asks(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def loader(source: str, **kwargs: Any) -> str:
        calls.append(kwargs)
        return source

    load_pretrained(spec_for(tmp_path), loader, trust_remote_code=True)
    hub = spec_for(tmp_path).model_copy(update={"name": "hub", "source": "a/b"})
    load_pretrained(hub, loader)
    assert calls and all(call["trust_remote_code"] is False for call in calls)


def test_a_folder_with_only_pickled_weights_is_refused_before_loading(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"a pickle we must never open")

    def loader(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the loader must not be reached")

    with pytest.raises(ModelLoadError) as refused:
        load_pretrained(spec_for(tmp_path), loader, use_safetensors=True)
    message = str(refused.value)
    assert "pytorch_model.bin" in message and "only safetensors" in message
    assert "safe_serialization=True" in message, "the message says how to fix it"


def test_a_real_pickled_checkpoint_is_refused_by_the_text_runner(
    tiny_text_model: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_text_model, folder)
    weights = folder / "model.safetensors"
    torch.save(load_file(str(weights)), folder / "pytorch_model.bin")
    weights.unlink()

    from engine.runners.transformers_text import TransformersTextRunner

    runner = TransformersTextRunner(spec_for(folder), Settings(torch_threads=1))
    with pytest.raises(ModelLoadError, match=r"weights only as pytorch_model\.bin"):
        runner.setup("cpu")


def test_no_production_code_unpickles_or_trusts_remote_code() -> None:
    # torch.load only with weights_only=True on the same call line: tensors, never objects.
    forbidden = re.compile(
        r"trust_remote_code\s*=\s*True|torch\.load\((?![^)]*weights_only\s*=\s*True)"
        r"|pickle\.loads?\(|joblib\.load\("
        r"|allow_pickle\s*=\s*True|safe_mode\s*=\s*False|use_safetensors\s*=\s*False"
    )
    hits = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in PRODUCTION
        for path in package.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert hits == []


def test_celery_speaks_json_only_on_both_sides() -> None:
    from api.dispatch import producer_settings
    from worker.celery_app import create_app

    settings = Settings(broker_url="redis://127.0.0.1:1/0")
    for config in (celery_settings(settings), producer_settings(settings)):
        assert config["accept_content"] == ["json"]
        assert config["task_serializer"] == config["result_serializer"] == "json"
    worker = create_app(settings)
    assert list(worker.conf.accept_content) == ["json"]
    assert worker.conf.task_serializer == "json"


def test_a_pickled_message_is_refused_by_the_worker_s_consumer() -> None:
    from kombu import Exchange, Queue
    from kombu.exceptions import ContentDisallowed
    from kombu.serialization import dumps, loads

    from worker.celery_app import create_app

    app = create_app(Settings(broker_url="memory://"))
    ran: list[str] = []

    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (ran.append, ("pickle ran",))

    content_type, encoding, body = dumps([[Exploit()], {}, {}], serializer="pickle")
    with pytest.raises(ContentDisallowed):
        loads(body, content_type, encoding, accept=set(app.conf.accept_content))
    assert ran == []
    # The same accept list is what the worker's task consumer is built with.
    with app.connection_for_read() as conn:
        consumer = app.amqp.TaskConsumer(conn, queues=[Queue("q", Exchange("q"), "q")])
        assert {"application/json"} == set(consumer.accept)
