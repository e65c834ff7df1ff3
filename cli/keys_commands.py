"""``bulkscore keys ...``: API keys, managed directly on the database (server side)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from cli.console import EXIT_USAGE, err_console, fail, out_console
from core.config import get_settings
from core.db import get_engine, redact_url
from core.keys import ApiKeyError, create_key, list_keys, revoke_key

keys_app = typer.Typer(help="API keys (on BULKSCORE_DATABASE_URL).", no_args_is_help=True)

T = TypeVar("T")


def _in_transaction(work: Callable[[Connection], T]) -> T:
    url = get_settings().database_url
    try:
        with get_engine(url).begin() as conn:
            return work(conn)
    except ApiKeyError as exc:
        fail(str(exc), EXIT_USAGE)
    except SQLAlchemyError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fail(
            f"database {redact_url(url)}: {first_line} "
            "(is it running, and migrated with `bulkscore db upgrade`?)"
        )


@keys_app.command("create")
def create(name: str = typer.Argument(..., help="A label for the key, e.g. ci or alice.")) -> None:
    """Create a key and print it. It is shown this once: only its hash is stored."""
    key_id, plaintext = _in_transaction(lambda conn: create_key(conn, name))
    err_console.print(
        f"created key {key_id} [bold]{escape(name)}[/]; store it now, it cannot be shown again:",
        highlight=False,
        soft_wrap=True,
    )
    # The key alone on stdout, so `export BULKSCORE_API_KEY=$(bulkscore keys create ci)` works.
    typer.echo(plaintext)


@keys_app.command("revoke")
def revoke(
    name_or_prefix: str = typer.Argument(..., help="The key's name or its prefix (bsk_...)."),
) -> None:
    """Revoke a key: requests with it are refused (401) from now on."""
    revoked = _in_transaction(lambda conn: revoke_key(conn, name_or_prefix))
    if not revoked:
        fail(f"no active key is named or prefixed {name_or_prefix!r}", EXIT_USAGE)
    for key in revoked:
        typer.echo(f"revoked key {key.id} {key.name} ({key.prefix}...)")


@keys_app.command("list")
def list_(
    all_keys: bool = typer.Option(False, "--all", help="Also show revoked keys."),
) -> None:
    """List keys (name, prefix, dates); never the keys themselves."""
    keys = _in_transaction(lambda conn: list_keys(conn, include_revoked=all_keys))
    table = Table("id", "name", "prefix", "created", "revoked")
    for key in keys:
        table.add_row(
            str(key.id),
            key.name,
            key.prefix + "...",
            f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "",
        )
    out_console.print(table)
