"""``bulkscore keys ...``: API keys, managed directly on the database (server side)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from cli.console import EXIT_USAGE, JSON_HELP, err_console, fail, out_console, print_json

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from core.keys import ApiKey

keys_app = typer.Typer(help="API keys (on BULKSCORE_DATABASE_URL).", no_args_is_help=True)

T = TypeVar("T")


def _in_transaction(work: Callable[[Connection], T]) -> T:
    # Deferred: SQL and the settings are not needed by `bulkscore --help`.
    from sqlalchemy.exc import SQLAlchemyError

    from core.config import get_settings
    from core.db import get_engine, redact_url
    from core.keys import ApiKeyError

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
def create(
    name: str = typer.Argument(..., help="A label for the key, e.g. ci or alice."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create a key and print it. It is shown this once: only its hash is stored."""
    # Deferred: as in _in_transaction.
    from core.keys import create_key

    key_id, plaintext = _in_transaction(lambda conn: create_key(conn, name))
    err_console.print(
        f"created key {key_id} [bold]{escape(name)}[/]; store it now, it cannot be shown again:",
        highlight=False,
        soft_wrap=True,
    )
    # The key alone on stdout, so `export BULKSCORE_API_KEY=$(bulkscore keys create ci)` works.
    if as_json:
        print_json({"id": key_id, "name": name, "key": plaintext})
    else:
        typer.echo(plaintext)


@keys_app.command("revoke")
def revoke(
    name_or_prefix: str = typer.Argument(..., help="The key's name or its prefix (bsk_...)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Revoke a key: requests with it are refused (401) from now on."""
    # Deferred: as in _in_transaction.
    from core.keys import revoke_key

    revoked = _in_transaction(lambda conn: revoke_key(conn, name_or_prefix))
    if not revoked:
        fail(f"no active key is named or prefixed {name_or_prefix!r}", EXIT_USAGE)
    if as_json:
        print_json([_key_json(key) for key in revoked])
        return
    for key in revoked:
        typer.echo(f"revoked key {key.id} {key.name} ({key.prefix}...)")


@keys_app.command("list")
def list_(
    all_keys: bool = typer.Option(False, "--all", help="Also show revoked keys."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List keys (name, prefix, dates); never the keys themselves."""
    # Deferred: as in _in_transaction.
    from core.keys import list_keys

    keys = _in_transaction(lambda conn: list_keys(conn, include_revoked=all_keys))
    if as_json:
        print_json([_key_json(key) for key in keys])
        return
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


def _key_json(key: ApiKey) -> dict[str, Any]:
    """A key's public fields (never the key itself: only its hash is stored)."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }
