"""Alembic environment: the URL is the caller's (``core.migrate``) or BULKSCORE_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from core.config import get_settings
from core.db import bound_sessions, process_limits
from core.tables import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connectable = create_engine(url, poolclass=pool.NullPool)
    # The migration's DDL waits a bounded time for its locks, as every session does: one
    # queued forever behind an open transaction would queue every query behind itself.
    bound_sessions(connectable, process_limits())
    with connectable.connect() as connection:
        # render_as_batch lets later migrations alter columns on SQLite too.
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
