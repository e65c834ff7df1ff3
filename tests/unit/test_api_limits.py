"""The body size middleware, driven with raw ASGI messages."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from api.limits import BodySizeLimitMiddleware

LIMIT = 1000


async def reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the whole body and answers how much it got."""
    body = await Request(scope, receive).body()
    await JSONResponse({"read": len(body)})(scope, receive, send)


def call(
    chunks: list[bytes], content_length: int | None = None, app: Any = reading_app
) -> tuple[list[Message], int]:
    """Run the middleware over a body sent in ``chunks``; return what it sent, chunks pulled."""
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    pulled = 0

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        if pulled > len(chunks):
            raise AssertionError("read past the end of the body")
        return {
            "type": "http.request",
            "body": chunks[pulled - 1],
            "more_body": pulled < len(chunks),
        }

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(BodySizeLimitMiddleware(app, max_bytes=LIMIT)(scope, receive, send))
    return sent, pulled


def status_of(sent: list[Message]) -> int:
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def test_a_declared_oversize_body_is_refused_before_reading_any_of_it() -> None:
    sent, pulled = call([b"x" * 600, b"x" * 600], content_length=1200)
    assert status_of(sent) == 413
    assert pulled == 0
    assert b"the limit is 1000 bytes" in sent[-1]["body"]


def test_a_streamed_oversize_body_is_cut_off_once_it_passes_the_limit() -> None:
    # No Content-Length (chunked): 10 chunks of 300 bytes; the limit trips on the 4th.
    sent, pulled = call([b"x" * 300] * 10)
    assert status_of(sent) == 413
    assert pulled == 4


def test_a_body_under_the_limit_passes_through() -> None:
    sent, pulled = call([b"x" * 500, b"x" * 500], content_length=1000)
    assert status_of(sent) == 200
    assert sent[-1]["body"] == b'{"read":1000}'
    assert pulled == 2


def test_a_body_read_outside_exception_handling_still_gets_413() -> None:
    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass

    sent, pulled = call([b"x" * 600] * 3, app=raw_app)
    assert status_of(sent) == 413
    assert pulled == 2


def test_non_http_scopes_are_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    asyncio.run(BodySizeLimitMiddleware(app, max_bytes=1)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]
