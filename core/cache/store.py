"""Looking up and storing cached predictions, many inputs per statement.

Both calls run in a transaction of their own, never in the one that writes result rows: a
cache that fails (its table missing, a lock timeout) must cost a forward pass, not a chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from sqlalchemy import Connection, and_, select

from core.clock import utcnow
from core.jobs.bulk_copy import dialect_insert
from core.jobs.predictions import Prediction
from core.tables import result_cache

# Hashes per lookup statement: far below SQLite's and PostgreSQL's parameter limits, and a
# write window (512 items) is one statement.
LOOKUP_BATCH = 1000


def input_sha256(value: str | bytes) -> str:
    """The cache key of an input: SHA-256 of an image's raw bytes or of a text's UTF-8."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()


def lookup_many(
    conn: Connection, model: str, revision: str, hashes: Iterable[str]
) -> dict[str, Prediction]:
    """The cached predictions of those of ``hashes`` the cache holds, by hash."""
    wanted = sorted(set(hashes))
    found: dict[str, Prediction] = {}
    for start in range(0, len(wanted), LOOKUP_BATCH):
        query = select(
            result_cache.c.input_sha256,
            result_cache.c.label,
            result_cache.c.score,
            result_cache.c.top_k,
        ).where(
            and_(
                result_cache.c.model == model,
                result_cache.c.model_revision == revision,
                result_cache.c.input_sha256.in_(wanted[start : start + LOOKUP_BATCH]),
            )
        )
        for digest, label, score, top_k in conn.execute(query):
            pairs = [(str(name), float(value)) for name, value in top_k or []]
            found[digest] = Prediction(label=label, score=score, top_k=pairs)
    return found


def store_many(
    conn: Connection, model: str, revision: str, predictions: Mapping[str, Prediction]
) -> int:
    """Store successful ``predictions`` (by input hash); how many rows were new.

    A per-item error is never stored (it may be transient, and it is no answer to serve). A
    row already there (a concurrent worker stored the same input) is left as it is: an
    insert conflict does nothing, so two writers never wait on or fail for each other.
    """
    now = utcnow()
    rows = [
        {
            "model": model,
            "model_revision": revision,
            "input_sha256": digest,
            "label": prediction.label,
            "score": prediction.score,
            "top_k": [list(pair) for pair in prediction.top_k] or None,
            "created_at": now,
        }
        for digest, prediction in sorted(predictions.items())
        if prediction.error is None
        and prediction.label is not None
        and prediction.score is not None
    ]
    if not rows:
        return 0
    statement = dialect_insert(conn, result_cache).on_conflict_do_nothing(
        index_elements=["model", "model_revision", "input_sha256"]
    )
    result = conn.execute(statement, rows)
    return max(result.rowcount, 0)
