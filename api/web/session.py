"""The signed-in browser: its session cookie, the key it stands for, and CSRF checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request, status
from fastapi.responses import RedirectResponse, Response

from api.deps import EngineDep
from core.web_sessions import csrf_matches, csrf_token, session_key

COOKIE = "bulkscore_session"


class SignInRequired(Exception):
    """The page needs a signed-in browser; answered with a redirect to the sign-in page."""


class CsrfRefused(Exception):
    """A form that changes something came without its session's CSRF token: 403."""


@dataclass(frozen=True, slots=True)
class WebUser:
    key_id: int
    token: str

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


def optional_user(request: Request, engine: EngineDep) -> WebUser | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    with engine.connect() as conn:
        key_id = session_key(conn, token)
    return WebUser(key_id, token) if key_id is not None else None


def signed_in_user(user: Annotated[WebUser | None, Depends(optional_user)]) -> WebUser:
    if user is None:
        raise SignInRequired()
    return user


OptionalUser = Annotated[WebUser | None, Depends(optional_user)]
SignedIn = Annotated[WebUser, Depends(signed_in_user)]


def check_csrf(user: WebUser, sent: str | None) -> None:
    """Refuse (403) a state-changing form whose CSRF token is missing or not this session's."""
    if not csrf_matches(user.token, sent):
        raise CsrfRefused()


def set_session_cookie(response: Response, token: str, secure: bool) -> None:
    # HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it.
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/")


def install_sign_in_redirect(app: FastAPI) -> None:
    async def to_sign_in(request: Request, _exc: Exception) -> Response:
        return RedirectResponse(
            f"/signin?next={request.url.path}", status_code=status.HTTP_303_SEE_OTHER
        )

    async def csrf_refused(_request: Request, _exc: Exception) -> Response:
        return Response(
            "403 Forbidden: this form's CSRF token is missing or wrong; reload the page.",
            status_code=status.HTTP_403_FORBIDDEN,
            media_type="text/plain; charset=utf-8",
        )

    app.add_exception_handler(SignInRequired, to_sign_in)
    app.add_exception_handler(CsrfRefused, csrf_refused)
