"""What the service commands (api, worker, beat) do first about their output."""

from __future__ import annotations


def prepare_service_output() -> None:
    """With BULKSCORE_LOG_FORMAT=json, every line the process writes becomes JSON.

    Called before the service's framework is imported, so that nothing it writes at start-up
    (Celery's banner, a native library's notice) escapes as plain text.
    """
    # Deferred: the settings (pydantic) are not needed by `bulkscore --help`.
    from core.config import get_settings
    from core.logs import capture_stray_output

    if get_settings().log_format == "json":
        capture_stray_output()
