"""Web sessions: a signed-in browser, by a random token in its cookie.

Only the token's SHA-256 is stored, so a leaked database holds no usable session. The CSRF
token of a session is derived from its token (an HMAC-free keyed hash: the session token is
190 random bits and never leaves the cookie), so the server stores nothing more and a page
can embed it without revealing the session token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import Connection, and_, delete, insert, select

from core.clock import utcnow
from core.keys import MAX_KEY_CHARS
from core.tables import api_keys, web_sessions

SESSION_LIFETIME = timedelta(hours=12)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: a one-way function of its token, distinct from its hash."""
    return hashlib.sha256(b"bulkscore-csrf:" + session_token.encode("utf-8")).hexdigest()


def csrf_matches(session_token: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(session_token), sent or "")


def open_session(conn: Connection, key_id: int) -> str:
    """Store a new session of ``key_id`` (its hash only); return the token for the cookie.

    Expired sessions are deleted on the way: signing in is rare enough to pay for that.
    """
    now = utcnow()
    conn.execute(delete(web_sessions).where(web_sessions.c.expires_at < now))
    token = secrets.token_urlsafe(32)
    conn.execute(
        insert(web_sessions).values(
            token_hash=_digest(token),
            key_id=key_id,
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    return token


def session_key(conn: Connection, token: str | None) -> int | None:
    """The key id of a live session whose key is still active; None otherwise."""
    if not token or len(token) > MAX_KEY_CHARS:
        return None
    row = conn.execute(
        select(web_sessions.c.key_id)
        .select_from(web_sessions.join(api_keys, api_keys.c.id == web_sessions.c.key_id))
        .where(
            and_(
                web_sessions.c.token_hash == _digest(token),
                web_sessions.c.expires_at > utcnow(),
                api_keys.c.revoked_at.is_(None),
            )
        )
    ).first()
    return int(row.key_id) if row is not None else None


def close_session(conn: Connection, token: str | None) -> None:
    if token:
        conn.execute(delete(web_sessions).where(web_sessions.c.token_hash == _digest(token)))
