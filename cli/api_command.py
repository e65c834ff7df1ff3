"""``bulkscore api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

import typer

from cli.service_logs import prepare_service_output


def api(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: all)."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="Server processes."),
) -> None:
    """Serve the HTTP API (docs at /docs) on BULKSCORE_DATABASE_URL and BULKSCORE_BROKER_URL.

    The database must be migrated first (`bulkscore db upgrade`).
    """
    prepare_service_output()
    import uvicorn

    # Deferred: the settings (pydantic) are not needed by `bulkscore --help`.
    from core.config import get_settings
    from core.logs import uvicorn_log_config

    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=get_settings().log_level.lower(),
        # Text or JSON lines, with the job id on lines about a job (core/logs.py).
        log_config=uvicorn_log_config(get_settings().log_level, get_settings().log_format),
        # Behind a reverse proxy the client address comes from X-Forwarded-For.
        proxy_headers=True,
    )
