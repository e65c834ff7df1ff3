"""Every settings error is one line naming the variable, what it accepts and the value."""

from __future__ import annotations

import pytest

from core.config import SettingsError, get_settings, reset_settings_cache


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"BULKSCORE_MAX_BATCH_SIZE": "abc"},
            "BULKSCORE_MAX_BATCH_SIZE: must be an integer >= 1 (got 'abc')",
        ),
        (
            {"BULKSCORE_CROSS_JOB_WAIT_MS": "5000"},
            "BULKSCORE_CROSS_JOB_WAIT_MS: must be an integer >= 0 and <= 1000 (got '5000')",
        ),
        (
            {"BULKSCORE_LOG_FORMAT": "xml"},
            "BULKSCORE_LOG_FORMAT: must be one of text, json (got 'xml')",
        ),
        (
            {"BULKSCORE_FIRST_TOKEN_LAST_LAYER": "maybe"},
            "BULKSCORE_FIRST_TOKEN_LAST_LAYER: must be true or false (got 'maybe')",
        ),
        (
            {"BULKSCORE_FAIR_TIME_SLICE_S": "soon"},
            "BULKSCORE_FAIR_TIME_SLICE_S: must be a number >= 0 (got 'soon')",
        ),
        (
            {"BULKSCORE_SCHEDULE_TIMEZONE": "Europe/Parsi"},
            "BULKSCORE_SCHEDULE_TIMEZONE: unknown timezone 'Europe/Parsi'; use an IANA name "
            "such as UTC",
        ),
        (
            {"BULKSCORE_WORKER_DB_LOCK_TIMEOUT_S": "10"},
            "BULKSCORE_WORKER_DB_LOCK_TIMEOUT_S (10) must be longer than "
            "BULKSCORE_DB_IDLE_IN_TRANSACTION_TIMEOUT_S (60)",
        ),
        (
            {"BULKSCORE_MAX_BATCH_SIZE": "0", "BULKSCORE_CHUNK_SIZE": "x" * 200},
            "BULKSCORE_MAX_BATCH_SIZE: must be an integer >= 1 (got '0'); "
            "BULKSCORE_CHUNK_SIZE: must be an integer >= 1 (got '" + "x" * 59 + "...')",
        ),
    ],
)
def test_one_line_per_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    try:
        with pytest.raises(SettingsError) as raised:
            get_settings()
    finally:
        reset_settings_cache()
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
