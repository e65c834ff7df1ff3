"""Schedule entries of the models file: parsing, refusals with clear messages, due times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from core.config import Settings
from core.models.registry import Registry
from core.schedules.config import (
    ScheduleConfigError,
    SourceKind,
    latest_due,
    load_schedules,
    next_due,
    parse_schedules,
)

MODELS = """
[models.tiny]
task = "text-classification"
backend = "transformers"
source = "/nowhere"

[models.photos]
task = "image-classification"
backend = "keras"
source = "keras:ResNet50/imagenet"
"""

SQL = {
    "cron": "0 2 * * *",
    "model": "tiny",
    "source": "sql",
    "url": "postgresql+psycopg://reader@db/shop",
    "query": "SELECT id, body AS text, updated_at FROM reviews WHERE updated_at > :since",
    "watermark": "updated_at",
}
FILES = {"cron": "30 3 * * *", "model": "photos", "source": "files", "path": "/data/in/*.jpg"}


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    return Registry.load(path)


def parse_one(registry: Registry, **entry: Any) -> Any:
    return parse_schedules({"s": entry}, registry)[0]


def test_the_file_holds_models_and_schedules_side_by_side(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(
        MODELS
        + '\n[schedules.nightly-reviews]\ncron = "0 2 * * *"\nmodel = "tiny"\nsource = "sql"\n'
        'url = "sqlite:///shop.db"\nwatermark = "updated_at"\n'
        'query = "SELECT id, body AS text, updated_at FROM r WHERE updated_at > :since"\n'
        '\n[schedules.drop]\ncron = "*/5 * * * *"\nmodel = "tiny"\nsource = "jsonl"\n'
        'path = "incoming/*.jsonl"\nowner_key = "nightly"\n'
    )
    drop, nightly = load_schedules(tmp_path / "models.toml")
    assert (drop.name, nightly.name) == ("drop", "nightly-reviews")
    assert nightly.source == SourceKind.SQL and nightly.spec.name == "tiny"
    # A relative glob is relative to the models file, like a model's relative source.
    assert drop.path == str(tmp_path / "incoming" / "*.jsonl")
    assert drop.owner_key == "nightly"


def test_a_file_without_schedules_has_none(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(MODELS)
    assert load_schedules(tmp_path / "models.toml") == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": "gpt-9"}, "unknown model 'gpt-9'; known models: photos, tiny"),
        ({"cron": "61 * * * *"}, "cron '61 * * * *' is not a valid cron expression"),
        ({"cron": "every night"}, "is not a valid cron expression"),
        ({"url": None, "watermark": None}, "a sql source needs url, watermark"),
        ({"query": "SELECT id, body AS text, updated_at FROM reviews"}, "must use the :since"),
        ({"query": "SELECT * FROM r WHERE d > :since_day"}, "must use the :since"),
        ({"source": "ftp"}, "source: Input should be 'sql', 'files', 'jsonl', 'csv' or 'parquet'"),
        ({"path": "/data/*.csv"}, "path is for files, jsonl, csv and parquet sources, not sql"),
        ({"crn": "0 2 * * *"}, "unknown field 'crn'"),
        ({"spec": "x"}, "unknown field 'spec'"),
        ({"url": "not a url"}, "url is not a SQLAlchemy URL"),
    ],
)
def test_a_bad_sql_schedule_is_refused_saying_why(
    registry: Registry, change: dict[str, Any], message: str
) -> None:
    entry = {**SQL, **change}
    entry = {key: value for key, value in entry.items() if value is not None}
    with pytest.raises(ScheduleConfigError) as info:
        parse_schedules({"nightly": entry}, registry, origin=Path("models.toml"))
    assert str(info.value).startswith("schedule 'nightly' in models.toml: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"path": None}, "a files source needs path"),
        ({"url": "sqlite:///x.db"}, "url apply to sql sources only"),
        ({"source": "jsonl"}, "model 'photos' scores images; a jsonl source holds texts"),
        ({"model": None}, "model is required"),
        ({"cron": None}, "cron is required"),
    ],
)
def test_a_bad_files_schedule_is_refused_saying_why(
    registry: Registry, change: dict[str, Any], message: str
) -> None:
    entry = {key: value for key, value in {**FILES, **change}.items() if value is not None}
    with pytest.raises(ScheduleConfigError, match=message):
        parse_schedules({"photo-drop": entry}, registry)


def test_schedule_names_follow_the_model_name_rules(registry: Registry) -> None:
    with pytest.raises(ScheduleConfigError, match="lower-case letters"):
        parse_schedules({"Nightly Run": FILES}, registry)


def test_the_timezone_setting_must_be_a_real_zone() -> None:
    assert Settings(schedule_timezone="Europe/Paris").schedule_timezone == "Europe/Paris"
    with pytest.raises(ValidationError, match="unknown timezone 'Europe/Parsi'"):
        Settings(schedule_timezone="Europe/Parsi")


UTC_ZONE = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "now, expected",
    [
        ("2025-01-10T02:00:00", "2025-01-10T02:00:00"),  # exactly due: due now, not yesterday
        ("2025-01-10T02:00:00.900", "2025-01-10T02:00:00"),
        ("2025-01-10T01:59:59.999", "2025-01-09T02:00:00"),
        ("2025-01-10T15:00:00", "2025-01-10T02:00:00"),
    ],
)
def test_latest_due_is_the_last_due_time_at_or_before_now(now: str, expected: str) -> None:
    assert latest_due("0 2 * * *", at(now), UTC_ZONE) == at(expected)


def test_cron_is_read_in_the_configured_timezone() -> None:
    # 02:00 in Paris is 01:00 UTC in winter and 00:00 UTC in summer.
    assert latest_due("0 2 * * *", at("2025-01-10T12:00:00"), PARIS) == at("2025-01-10T01:00:00")
    assert latest_due("0 2 * * *", at("2025-07-10T12:00:00"), PARIS) == at("2025-07-10T00:00:00")
    assert next_due("0 2 * * *", at("2025-01-10T12:00:00"), PARIS) == at("2025-01-11T01:00:00")
    assert latest_due("0 2 * * *", at("2025-01-10T12:00:00"), PARIS).tzinfo == UTC


def test_next_due_is_strictly_after_now() -> None:
    quarter = at("2025-01-10T02:15:00")
    assert next_due("*/15 * * * *", quarter, UTC_ZONE) == at("2025-01-10T02:30:00")


def test_the_example_schedules_parse_next_to_the_shipped_models(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    combined = tmp_path / "models.toml"
    combined.write_text(
        (root / "core" / "models" / "models.toml").read_text()
        + "\n"
        + (root / "examples" / "schedules.toml").read_text()
    )
    names = {schedule.name: schedule for schedule in load_schedules(combined)}
    assert set(names) == {"nightly-reviews", "photo-drop", "feedback-exports"}
    assert names["nightly-reviews"].owner_key == "nightly"
