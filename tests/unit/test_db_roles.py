"""Which session limits each role's database connections get (the PostgreSQL side of it is
``tests/integration/test_session_limits.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from core import db
from core.config import Settings
from core.db import DbRole, SessionLimits, get_engine, process_limits, set_process_role

CUSTOM = Settings(
    db_idle_in_transaction_timeout_s=7,
    api_db_lock_timeout_s=2,
    worker_db_lock_timeout_s=11,
    beat_db_lock_timeout_s=13,
    cli_db_lock_timeout_s=17,
)


@pytest.fixture()
def no_process_role(monkeypatch: pytest.MonkeyPatch) -> None:
    # The process role is process-wide: give this test a fresh one and restore it after.
    monkeypatch.setattr(db, "_process_limits", [])


@pytest.mark.parametrize(
    ("role", "lock"),
    [(DbRole.API, 2), (DbRole.WORKER, 11), (DbRole.BEAT, 13), (DbRole.CLI, 17)],
)
def test_each_role_takes_its_own_lock_timeout_and_the_shared_idle_timeout(
    role: DbRole, lock: int
) -> None:
    assert SessionLimits.for_role(role, CUSTOM) == SessionLimits(role, lock, 7)


def test_the_defaults_suit_each_role() -> None:
    defaults = Settings()
    limits = {role: SessionLimits.for_role(role, defaults) for role in DbRole}
    idle = defaults.db_idle_in_transaction_timeout_s
    assert idle > 0
    # A request never waits long for a lock ...
    assert 0 < limits[DbRole.API].lock_timeout_s < idle
    # ... and a worker outwaits a frozen holder (ended after ``idle``) instead of failing
    # its chunk's attempt; every role waits a bounded time.
    assert limits[DbRole.WORKER].lock_timeout_s > idle
    assert all(limit.lock_timeout_s > 0 for limit in limits.values())


def test_a_worker_lock_timeout_that_a_frozen_session_outlasts_is_refused() -> None:
    with pytest.raises(ValidationError, match="BULKSCORE_WORKER_DB_LOCK_TIMEOUT_S"):
        Settings(db_idle_in_transaction_timeout_s=60, worker_db_lock_timeout_s=60)
    # Either limit off is the operator's choice, and allowed.
    Settings(db_idle_in_transaction_timeout_s=0, worker_db_lock_timeout_s=30)
    Settings(db_idle_in_transaction_timeout_s=60, worker_db_lock_timeout_s=0)


def test_the_process_role_is_the_cli_s_until_an_entry_point_says_otherwise(
    no_process_role: None, tmp_path: Path
) -> None:
    assert process_limits().role == DbRole.CLI
    url = f"sqlite:///{tmp_path / 'roles.db'}"
    cli_engine = get_engine(url)
    set_process_role(DbRole.WORKER, CUSTOM)
    assert process_limits() == SessionLimits(DbRole.WORKER, 11, 7)
    worker_engine = get_engine(url)
    # Engines are per role: the one made before keeps its limits and is no longer handed out.
    assert worker_engine is not cli_engine
    assert get_engine(url) is worker_engine
    # SQLite has no such session settings; its engines work as before.
    with worker_engine.connect() as conn:
        assert conn.scalar(text("SELECT 1")) == 1
    db.dispose_engines()
