"""A small HTTP client for the bulkscore API, with errors turned into clear messages.

Every failure (server unreachable, 401, 404, 422, ...) ends the command through
:func:`cli.console.fail` with one readable line, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import httpx

from cli.console import EXIT_FAILURE, EXIT_USAGE, fail
from core.config import get_settings

# Uploads and exports can be large; connecting should be quick or not at all.
TIMEOUT = httpx.Timeout(120.0, connect=5.0)


class ApiClient:
    """Calls ``BULKSCORE_API_URL`` with ``Authorization: Bearer $BULKSCORE_API_KEY``."""

    def __init__(self, base_url: str, api_key: str, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; any transport error or 4xx/5xx answer ends the command."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self._unreachable(exc)
        if response.is_error:
            fail_for(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed answer (checked for errors before the body is handed out)."""
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if response.is_error:
                    response.read()
                    fail_for(response)
                yield response
        except httpx.HTTPError as exc:
            self._unreachable(exc)

    def _unreachable(self, exc: httpx.HTTPError) -> NoReturn:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            fail(
                f"cannot reach the bulkscore API at {self.base_url} ({exc}); is `bulkscore api` "
                "running there? (set BULKSCORE_API_URL)"
            )
        fail(f"the bulkscore API at {self.base_url} did not answer properly: {exc}")

    def close(self) -> None:
        self.http.close()


def client_from_settings() -> ApiClient:
    """A client for the configured API; fails clearly if no key is configured."""
    settings = get_settings()
    if not settings.api_key:
        fail(
            "BULKSCORE_API_KEY is not set: create a key with `bulkscore keys create NAME` "
            "on the server and export it",
            EXIT_USAGE,
        )
    return ApiClient(settings.api_url, settings.api_key)


def error_detail(response: httpx.Response) -> str:
    """The server's explanation of an error answer, as one line."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if not isinstance(body, dict):
        return str(body)[:300]
    # A problem document (RFC 9457): per-field ``errors`` for a validation error, which read
    # better one by one than the summary in ``detail``; an older server sends FastAPI's
    # list as ``detail`` itself.
    detail = body.get("errors") or body.get("detail")
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        # Validation errors: [{"loc": ["body", "inputs", 0, "text"], "msg": ...}]
        parts = []
        for error in detail:
            if not isinstance(error, dict):
                continue
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            parts.append(f"{where}: {error.get('msg', '')}" if where else str(error.get("msg")))
        return "; ".join(parts) or str(detail)
    return str(body)[:300]


def fail_for(response: httpx.Response) -> NoReturn:
    detail = error_detail(response)
    code = response.status_code
    if code == 401:
        fail(
            f"the API refused the key ({detail}); set BULKSCORE_API_KEY to a key from "
            "`bulkscore keys create NAME`",
            EXIT_USAGE,
        )
    fail(f"{detail} (HTTP {code})", EXIT_USAGE if code < 500 else EXIT_FAILURE)
