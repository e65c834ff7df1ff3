"""Log lines written while a request concerns a job carry its id (``core.logs``)."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from core.logs import job_context

JOB_PATH = re.compile(r"^/v1/jobs/([0-9a-f]{32})(?:/|$)")


class JobLogContextMiddleware:
    """Sets the job id of ``/v1/jobs/{id}...`` requests for the records they emit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = JOB_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        with job_context(match.group(1)):
            await self.app(scope, receive, send)
