"""API keys: create, authenticate, revoke and list them.

A key is shown once, when it is created; the database keeps only its SHA-256 and a short
prefix (to recognise it in listings), so a leaked database does not leak usable keys. Keys
are 190 random bits, so an unsalted fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, insert, or_, select, update

from core.clock import utcnow
from core.tables import api_keys

KEY_PREFIX = "bsk_"
# "bsk_" plus 8 random characters: enough to tell keys apart, far too little to guess one.
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 8
# Longer bearer strings are refused before hashing: no key we issue is anywhere near this.
MAX_KEY_CHARS = 200
MAX_NAME_CHARS = 100  # api_keys.name is String(100)


class ApiKeyError(ValueError):
    """A key cannot be created or revoked as asked (duplicate name, no such key)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, as listings show it (never the key itself)."""

    id: int
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(plaintext: str) -> str:
    """The hex SHA-256 stored for ``plaintext``."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def new_plaintext_key() -> str:
    """A fresh key: ``bsk_`` and 32 URL-safe random characters."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def create_key(conn: Connection, name: str) -> tuple[int, str]:
    """Store a new key named ``name``; return its id and the plaintext (shown once).

    Args:
        conn: A connection inside a transaction (``engine.begin()``).
        name: A label for people (``ci``, ``alice``); active keys have distinct names so
            that ``revoke_key(name)`` names exactly one key.

    Raises:
        ApiKeyError: The name is empty, too long, or used by another active key.
    """
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise ApiKeyError(f"a key name must have 1 to {MAX_NAME_CHARS} characters")
    taken = conn.execute(
        select(api_keys.c.id).where(and_(api_keys.c.name == name, api_keys.c.revoked_at.is_(None)))
    ).first()
    if taken is not None:
        raise ApiKeyError(
            f"an active key is already named {name!r}; revoke it or pick another name"
        )
    plaintext = new_plaintext_key()
    key_id = conn.execute(
        insert(api_keys)
        .values(
            name=name,
            key_hash=hash_key(plaintext),
            prefix=plaintext[:DISPLAY_PREFIX_CHARS],
            created_at=utcnow(),
        )
        .returning(api_keys.c.id)
    ).scalar_one()
    return key_id, plaintext


def authenticate(conn: Connection, plaintext: str | None) -> int | None:
    """The id of the active key ``plaintext``, or None (unknown, revoked or malformed)."""
    if not plaintext or len(plaintext) > MAX_KEY_CHARS:
        return None
    digest = hash_key(plaintext)
    row = conn.execute(
        select(api_keys.c.id, api_keys.c.key_hash, api_keys.c.revoked_at).where(
            api_keys.c.key_hash == digest
        )
    ).first()
    # The lookup already matched the hash; the constant-time compare keeps the final
    # decision free of early-exit string comparison, whatever the database did.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    if row.revoked_at is not None:
        return None
    return int(row.id)


def revoke_key(conn: Connection, name_or_prefix: str) -> list[ApiKey]:
    """Revoke the active keys with this name, display prefix, or plaintext.

    Returns:
        The keys revoked now (empty if none matched an active key).
    """
    value = name_or_prefix.strip()
    if not value:
        return []
    match = or_(
        api_keys.c.name == value,
        api_keys.c.prefix == value,
        api_keys.c.key_hash == hash_key(value),
    )
    rows = conn.execute(
        select(api_keys).where(and_(match, api_keys.c.revoked_at.is_(None))).order_by(api_keys.c.id)
    ).all()
    if not rows:
        return []
    now = utcnow()
    conn.execute(
        update(api_keys).where(api_keys.c.id.in_([row.id for row in rows])).values(revoked_at=now)
    )
    return [ApiKey(row.id, row.name, row.prefix, row.created_at, now) for row in rows]


def list_keys(conn: Connection, include_revoked: bool = True) -> list[ApiKey]:
    """Every key, oldest first."""
    query = select(api_keys).order_by(api_keys.c.id)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [
        ApiKey(row.id, row.name, row.prefix, row.created_at, row.revoked_at)
        for row in conn.execute(query)
    ]


def key_hash_of(conn: Connection, key_id: int) -> str | None:
    """The stored SHA-256 of key ``key_id`` (None: no such key): the bucket a browser's
    session shares with its key's API calls in the submission rate limit."""
    return conn.scalar(select(api_keys.c.key_hash).where(api_keys.c.id == key_id))


def key_name_of(conn: Connection, key_id: int) -> str | None:
    """The name of key ``key_id`` (None: no such key); a schedule's ``owner_key`` names it."""
    return conn.scalar(select(api_keys.c.name).where(api_keys.c.id == key_id))
