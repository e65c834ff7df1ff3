"""The inputs hash is a stored fact: jobs made before any change still carry theirs."""

from __future__ import annotations

import hashlib
import json

from core.inputs.items import InputItem
from core.jobs.inputs_hash import HASH_BLOCK_ITEMS, inputs_hash


def field_by_field(inputs: list[InputItem]) -> str:
    """The stream as first written: one ``update`` per tagged field (the stored hashes)."""
    digest = hashlib.sha256()
    for item in inputs:
        for tag, value in (
            (b"i", item.item_id.encode("utf-8", "surrogatepass")),
            (b"t", None if item.text is None else item.text.encode("utf-8", "surrogatepass")),
            (b"d", item.data),
            (b"e", None if item.error is None else item.error.encode("utf-8", "surrogatepass")),
        ):
            digest.update(
                tag + b"-" if value is None else tag + len(value).to_bytes(8, "big") + value
            )
        if item.metadata is not None:
            meta = json.dumps(item.metadata, sort_keys=True, ensure_ascii=False).encode()
            digest.update(b"m" + len(meta).to_bytes(8, "big") + meta)
        digest.update(b"\n")
    return digest.hexdigest()


def varied(count: int) -> list[InputItem]:
    kinds = [
        lambda i: InputItem(f"t{i}", text=f"text {i} ünï 東京 🙂"),
        lambda i: InputItem(f"d{i}", data=bytes([i % 256]) * (i % 7)),
        lambda i: InputItem(f"e{i}", error=f"refused {i}"),
        lambda i: InputItem(f"s{i}", text="lone \udc80 surrogate"),
        lambda i: InputItem(f"m{i}", text="", metadata={"z": str(i), "a": "ä"}),
        lambda i: InputItem("", text=None),
    ]
    return [kinds[i % len(kinds)](i) for i in range(count)]


def test_the_hash_is_the_stream_hashed_field_by_field() -> None:
    for count in (0, 1, 7, HASH_BLOCK_ITEMS - 1, HASH_BLOCK_ITEMS, 2 * HASH_BLOCK_ITEMS + 5):
        inputs = varied(count)
        assert inputs_hash(inputs) == field_by_field(inputs), count
        assert inputs_hash(iter(inputs)) == field_by_field(inputs), count  # any iterable


def test_moving_bytes_between_fields_changes_the_hash() -> None:
    assert inputs_hash([InputItem("ab", text="c")]) != inputs_hash([InputItem("a", text="bc")])
    assert inputs_hash([InputItem("a", text="")]) != inputs_hash([InputItem("a", text=None)])
    split = [InputItem("a", text="x"), InputItem("b", text="y")]
    assert inputs_hash(split) != inputs_hash(split[::-1])
