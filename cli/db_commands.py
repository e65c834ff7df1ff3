"""``bulkscore db ...``: schema migrations."""

from __future__ import annotations

import typer

db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations to BULKSCORE_DATABASE_URL (creates the tables on a fresh database)."""
    # Deferred: Alembic, SQLAlchemy and the settings are not needed by `bulkscore --help`.
    from core.config import get_settings
    from core.db import redact_url
    from core.migrate import upgrade as run_upgrade

    url = get_settings().database_url
    run_upgrade(url, revision)
    typer.echo(f"database {redact_url(url)} is at revision {revision}")


@db_app.command("downgrade")
def downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Revert migrations down to REVISION."""
    # Deferred: as for `db upgrade`.
    from core.config import get_settings
    from core.db import redact_url
    from core.migrate import downgrade as run_downgrade

    url = get_settings().database_url
    run_downgrade(url, revision)
    typer.echo(f"database {redact_url(url)} is at revision {revision}")
