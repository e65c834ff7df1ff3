"""Database engines. One engine per URL, role and process; each backend gets the session
settings it needs.

PostgreSQL leaves ``idle_in_transaction_session_timeout`` and ``lock_timeout`` off by default
(and managed services rarely change that): a process frozen inside a transaction (SIGSTOP, a
paused container, a swapped-out host) would hold its row locks until it wakes, and every
writer of the same job would wait behind it. So every session the service opens sets both
when it connects, with values that suit what the process is (its :class:`DbRole`), and names
itself in ``pg_stat_activity`` (``application_name = bulkscore-<role>-<pid>``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from core.config import Settings, get_settings
from core.sqlite_wal import FALLBACK_PAGES, WalCheckpointer

# SQLSTATE of a lock wait that ran past ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"
# SQLSTATE of a statement on a session the server ended for idling in its transaction past
# ``idle_in_transaction_session_timeout`` (a process that was frozen, then woke up).
IDLE_IN_TRANSACTION_TIMEOUT = "25P03"


def redact_url(url: str) -> str:
    """The URL with any password hidden, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL we can parse: show nothing of it
        return "<unparseable url>"


class DbRole(StrEnum):
    """What a process is, as far as its database sessions go."""

    API = "api"  # answers requests: never waits long for a lock
    WORKER = "worker"  # scores chunks: outwaits a frozen holder rather than fail an attempt
    BEAT = "beat"  # ticks schedules: gives up and tries again at the next tick
    CLI = "cli"  # the CLI and embedded scoring (``bulkscore score``, ``train``, ``keys``)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What a PostgreSQL session of one role sets when it connects (0 = off, as in PostgreSQL)."""

    role: DbRole
    lock_timeout_s: int
    idle_in_transaction_timeout_s: int

    @classmethod
    def for_role(cls, role: DbRole, settings: Settings) -> SessionLimits:
        lock_timeouts = {
            DbRole.API: settings.api_db_lock_timeout_s,
            DbRole.WORKER: settings.worker_db_lock_timeout_s,
            DbRole.BEAT: settings.beat_db_lock_timeout_s,
            DbRole.CLI: settings.cli_db_lock_timeout_s,
        }
        return cls(role, lock_timeouts[role], settings.db_idle_in_transaction_timeout_s)


# Set once by a process's entry point (``set_process_role``); until then, the CLI's.
_process_limits: list[SessionLimits] = []


def set_process_role(role: DbRole, settings: Settings) -> SessionLimits:
    """Say what this process is: every engine it creates from now on sets ``role``'s limits.

    Called first thing by each entry point that is not the CLI (the API app, ``bulkscore
    worker``, ``bulkscore beat``). Engines are cached per role, so one made before the call
    keeps its own limits and is simply no longer handed out.
    """
    limits = SessionLimits.for_role(role, settings)
    _process_limits[:] = [limits]
    return limits


def process_limits() -> SessionLimits:
    """The session limits of this process's role (the CLI's if no entry point set one)."""
    if not _process_limits:
        return SessionLimits.for_role(DbRole.CLI, get_settings())
    return _process_limits[0]


_ENGINES: dict[tuple[str, SessionLimits], Engine] = {}
_CHECKPOINTERS: list[WalCheckpointer] = []


def get_engine(url: str, limits: SessionLimits | None = None) -> Engine:
    """A pooled engine for ``url`` whose sessions set ``limits`` (default: the process's)."""
    limits = limits or process_limits()
    engine = _ENGINES.get((url, limits))
    if engine is None:
        engine = _ENGINES[(url, limits)] = _create(url, limits)
    return engine


def _create(url: str, limits: SessionLimits) -> Engine:
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Several threads (API, progress bar) share the file; WAL lets readers run while a
        # writer commits, and busy_timeout waits for a lock instead of failing at once.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        checkpointer = _wal_checkpointer(engine)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            if checkpointer is not None:
                # Commits leave checkpoints to the thread (core.sqlite_wal).
                cursor.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")
                checkpointer.ensure_running()
            cursor.close()

    else:
        bound_sessions(engine, limits)
    return engine


def _wal_checkpointer(engine: Engine) -> WalCheckpointer | None:
    """A checkpointer for ``engine``'s database file; None for an in-memory database."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    checkpointer = WalCheckpointer(os.path.abspath(database))
    _CHECKPOINTERS.append(checkpointer)
    return checkpointer


def bound_sessions(engine: Engine, limits: SessionLimits) -> None:
    """Make every new PostgreSQL connection of ``engine`` set ``limits`` (other backends:
    nothing). For engines made outside :func:`get_engine` too (Alembic's)."""
    if engine.dialect.name != "postgresql":
        return

    @event.listens_for(engine, "connect")
    def _postgresql_session(dbapi_connection: Any, _record: Any) -> None:
        set_session_limits(dbapi_connection, limits)


def set_session_limits(dbapi_connection: Any, limits: SessionLimits) -> None:
    """Set ``limits`` and the session's name on a new PostgreSQL (psycopg) connection.

    ``SET`` statements rather than the ``options`` startup parameter, which connection
    poolers such as PgBouncer refuse. One round trip, committed: a session setting made in
    a transaction that is rolled back would be undone with it.
    """
    # The pid is read here, at connect time, so the name is right in any process.
    name = f"bulkscore-{limits.role.value}-{os.getpid()}"
    with dbapi_connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('lock_timeout', %s, false),"
            " set_config('idle_in_transaction_session_timeout', %s, false),"
            " set_config('application_name', %s, false)",
            (
                f"{limits.lock_timeout_s * 1000}",
                f"{limits.idle_in_transaction_timeout_s * 1000}",
                name,
            ),
        )
    dbapi_connection.commit()


def _sqlstate(exc: BaseException) -> str | None:
    cause = getattr(exc, "orig", exc)
    return getattr(cause, "sqlstate", None)


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (a SQLAlchemy or driver error) is a lock wait past ``lock_timeout``."""
    return _sqlstate(exc) == LOCK_NOT_AVAILABLE


def is_session_ended(exc: BaseException) -> bool:
    """Whether ``exc`` says the server ended this session for idling in its transaction."""
    return _sqlstate(exc) == IDLE_IN_TRANSACTION_TIMEOUT


def dispose_engines() -> None:
    """Close every pooled connection and forget the engines (after a fork, and in tests)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    for checkpointer in _CHECKPOINTERS:
        checkpointer.stop()
    _CHECKPOINTERS.clear()
