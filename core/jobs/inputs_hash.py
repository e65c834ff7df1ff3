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

# Items whose bytes go to the hash in one ``update``: an update per field (15 per item)
# took 35 ms of `bulkscore score`'s ~0.2 s of storing 20,000 texts; blocks take 26 ms.
HASH_BLOCK_ITEMS = 2048


def inputs_hash(inputs: Iterable[InputItem]) -> str:
    """SHA-256 over each input's id, text or bytes, and intake error, in order.

    Every field is written with a tag and its length, so no two different sequences of
    inputs (one text split across two, an id run into a text) hash the same stream. The
    stream is hashed a block of items at a time; SHA-256 of a stream does not depend on
    how it is cut, so every hash stored before this is still the hash of the same inputs.
    """
    digest = hashlib.sha256()
    block: list[bytes] = []
    for count, item in enumerate(inputs, 1):
        _append_fields(block, item)
        if count % HASH_BLOCK_ITEMS == 0:
            digest.update(b"".join(block))
            block.clear()
    digest.update(b"".join(block))
    return digest.hexdigest()


def _append_fields(block: list[bytes], item: InputItem) -> None:
    """One input's part of the hashed stream."""
    text = item.text
    error = item.error
    for tag, value in (
        (b"i", item.item_id.encode("utf-8", "surrogatepass")),
        (b"t", None if text is None else text.encode("utf-8", "surrogatepass")),
        (b"d", item.data),
        (b"e", None if error is None else error.encode("utf-8", "surrogatepass")),
    ):
        if value is None:
            block.append(tag + b"-")
        else:
            block.append(tag + len(value).to_bytes(8, "big"))
            block.append(value)
    if item.metadata is not None:
        # Only when present, so the hash of inputs without metadata (every job stored
        # before items carried it) is unchanged.
        meta = json.dumps(item.metadata, sort_keys=True, ensure_ascii=False).encode()
        block.append(b"m" + len(meta).to_bytes(8, "big"))
        block.append(meta)
    block.append(b"\n")


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
