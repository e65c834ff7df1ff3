"""A request body size limit, as ASGI middleware.

FastAPI has no body limit of its own (fastapi#362) and Starlette's multipart parser spools
file parts to disk without a total cap, so the limit sits in front of the app: a declared
``Content-Length`` over the limit is answered 413 before any of the body is read, and a
body without one (chunked) is counted as it streams in and cut off the moment it passes
the limit, so an oversize body is never read whole.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import PROBLEM_MEDIA_TYPE, ApiError, problem_bytes

PAYLOAD_TOO_LARGE = 413


class BodyTooLarge(ApiError):
    """The request body passed the limit while it was being read.

    An ``HTTPException`` (an ``ApiError``): raised inside a body read, FastAPI and
    Starlette pass it on (or render it) as a 413 instead of turning it into a generic 400 or 500.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(PAYLOAD_TOO_LARGE, "payload_too_large", too_large_message(max_bytes))


def too_large_message(max_bytes: int) -> str:
    return f"request body too large: the limit is {max_bytes} bytes"


class BodySizeLimitMiddleware:
    """Refuse HTTP request bodies larger than ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # Normally the app's exception handling already answered 413; this catches a
            # body read outside it (a middleware, say).
            if response_started:
                raise
            await _send_413(send, self.max_bytes)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                # The server (h11, httptools) refuses a malformed length before we run.
                return None
    return None


async def _send_413(send: Send, max_bytes: int) -> None:
    body = problem_bytes(PAYLOAD_TOO_LARGE, "payload_too_large", too_large_message(max_bytes))
    await send(
        {
            "type": "http.response.start",
            "status": PAYLOAD_TOO_LARGE,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is left unread; the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
