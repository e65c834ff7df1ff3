"""The job list's cursor: an opaque token for a position in (created_at, id) order.

Opaque to callers (URL-safe base64 of a small JSON array) so that its form may change; a
token that does not decode is a 422, not a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from api.problems import ApiError
from core.jobs.lifecycle import Job


def encode_cursor(job: Job) -> str:
    """The cursor that continues a page after ``job``."""
    raw = json.dumps([job.created_at.isoformat(), job.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[datetime, str]:
    """``(created_at, id)`` of the cursor's job; 422 ``invalid_cursor`` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, job_id = json.loads(raw)
        # A job id is printable and short (jobs.id is String(36)); anything else, a NUL
        # that PostgreSQL would refuse for one, is no cursor of ours.
        if not isinstance(created, str) or not isinstance(job_id, str):
            raise ValueError("not a cursor")
        if len(job_id) > 36 or not job_id.isprintable() or not job_id.isascii():
            raise ValueError("not a cursor")
        return datetime.fromisoformat(created), job_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ApiError(
            422, "invalid_cursor", "after must be a next_after value from a previous page"
        ) from None
