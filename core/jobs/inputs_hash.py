"""A SHA-256 of a job's inputs, in order: what makes a re-run's ``--job-id`` the same job.

``bulkscore score FILE --job-id J`` stores it with the job it creates; a later run with the
same id reads its file again and is refused unless the hash matches, so a reused id can
never export one file's results under another's name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from sqlalchemy import Connection, select, update

from core.inputs.items import InputItem
from core.tables import items, jobs


def inputs_hash(inputs: Iterable[InputItem]) -> str:
    """SHA-256 over each input's id, text or bytes, and intake error, in order.

    Every field is written with a tag and its length, so no two different sequences of
    inputs (one text split across two, an id run into a text) hash the same stream.
    """
    digest = hashlib.sha256()
    for item in inputs:
        fields: tuple[tuple[bytes, bytes | None], ...] = (
            (b"i", item.item_id.encode("utf-8", "surrogatepass")),
            (b"t", None if item.text is None else item.text.encode("utf-8", "surrogatepass")),
            (b"d", item.data),
            (b"e", None if item.error is None else item.error.encode("utf-8", "surrogatepass")),
        )
        for tag, value in fields:
            if value is None:
                digest.update(tag + b"-")
            else:
                digest.update(tag + len(value).to_bytes(8, "big") + value)
        if item.metadata is not None:
            # Only when present, so the hash of inputs without metadata (every job stored
            # before items carried it) is unchanged.
            meta = json.dumps(item.metadata, sort_keys=True, ensure_ascii=False).encode()
            digest.update(b"m" + len(meta).to_bytes(8, "big") + meta)
        digest.update(b"\n")
    return digest.hexdigest()


def stored_inputs_hash(conn: Connection, job_id: str) -> str:
    """The job's inputs hash: the stored one, or (for a job made before it was stored)
    the hash of its stored items, which are its inputs as they were read."""
    stored = conn.scalar(select(jobs.c.inputs_hash).where(jobs.c.id == job_id))
    if stored is not None:
        return str(stored)
    rows = conn.execute(
        select(items.c.item_id, items.c.text, items.c.data, items.c.error, items.c.metadata)
        .where(items.c.job_id == job_id)
        .order_by(items.c.index)
    )
    return inputs_hash(
        InputItem(item_id=item_id, text=text, data=data, error=error, metadata=metadata)
        for item_id, text, data, error, metadata in rows
    )


def store_inputs_hash(conn: Connection, job_id: str, digest: str) -> None:
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(inputs_hash=digest))


def inputs_difference(job_id: str, total: int, inputs_count: int, source: str) -> str:
    """Why a re-run with other inputs is refused, naming the job and what differs."""
    if total != inputs_count:
        what = f"the job has {total} item(s), {source} has {inputs_count}"
    else:
        what = f"same count ({total} items), different content"
    return (
        f"job {job_id} was made from other inputs than {source}: {what}. A job id stands for "
        "one set of inputs; choose another --job-id (or none) to score this file"
    )
