"""Device pinning: the environment a worker sets before any ML framework is imported."""

from __future__ import annotations

import pytest

from worker.pinning import PinningError, pin_device, set_tokenizers_parallelism


def test_a_gpu_worker_sees_only_its_gpu_in_nvidia_smi_order() -> None:
    env: dict[str, str] = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    pinned = pin_device(2, environ=env, modules=["json", "numpy"])
    assert pinned.device == "cuda"
    assert env == {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert "GPU 2" in pinned.describe()


def test_a_cpu_worker_hides_every_gpu() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    pinned = pin_device(None, environ=env, modules=[])
    assert pinned.device == "cpu"
    assert env == {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "transformers"])
def test_pinning_after_a_framework_import_is_refused(framework: str) -> None:
    env: dict[str, str] = {}
    with pytest.raises(PinningError, match=framework):
        pin_device(0, environ=env, modules=["os", framework])
    assert env == {}, "nothing may be set when it is too late to take effect"


def test_a_negative_gpu_is_refused() -> None:
    with pytest.raises(ValueError, match="--gpu"):
        pin_device(-1, environ={}, modules=[])


def test_tokenizers_parallelism_is_set_unless_the_operator_chose() -> None:
    env: dict[str, str] = {}
    assert set_tokenizers_parallelism(env) == "true" and env["TOKENIZERS_PARALLELISM"] == "true"
    chosen = {"TOKENIZERS_PARALLELISM": "false"}
    assert set_tokenizers_parallelism(chosen) == "false"


def test_the_tokenizer_pool_matches_the_threads_a_worker_is_given() -> None:
    one: dict[str, str] = {}
    assert set_tokenizers_parallelism(one, threads=1) == "false"
    assert "RAYON_NUM_THREADS" not in one
    two: dict[str, str] = {}
    assert set_tokenizers_parallelism(two, threads=2) == "true"
    assert two["RAYON_NUM_THREADS"] == "2"
