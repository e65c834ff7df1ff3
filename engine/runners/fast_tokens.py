"""Token ids straight from the Rust tokenizer, without the offsets nobody here reads.

``tokenizer(texts, truncation=True)`` on a fast tokenizer calls the Rust ``encode_batch``,
which also computes every token's character offsets, then wraps each encoding in Python
dicts. ``tokenizers`` (0.21+) has ``encode_batch_fast``: the same encodings without
offsets. On the DistilBERT-base tokenizer and the bench texts it took 142 ms for 4,000
texts against 181 ms for ``encode_batch`` and 211 ms for the full call (2 cores), and it
releases the GIL while it encodes, as the full call does. A text runner predicts from ids
only, so it takes this path when it gives the very same rows, and checks that it does.

The backend is configured exactly as the full call configures it
(``set_truncation_and_padding``: truncation to ``max_length``, longest first, on the
tokenizer's side; no padding; special tokens split or not as the tokenizer says), and the
rows kept are those the full call returns (``model_input_names``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

Rows = dict[str, list[Any]]  # model input name -> one row per text
Encode = Callable[[list[str]], Rows]

# What each model input is called on a tokenizers ``Encoding``. Not the attention mask: an
# unpadded row's is all ones, and padding makes it from the rows' lengths
# (``TransformersTextRunner._padded``); reading it cost a list per text, 66 ms per 20,000
# texts on the tokenizing thread (issue 16).
ENCODING_FIELDS = {
    "input_ids": "ids",
    "token_type_ids": "type_ids",
}

# Texts the path is checked on before it is used: truncated, empty, accented, CJK, special
# tokens written out, long runs of spaces.
PROBE_TEXTS = (
    "a probe",
    "",
    "Ünïcödé façade, naïve café; 東京タワー and emoji 🙂🙂",
    "[CLS] written out [SEP] <s> </s> [MASK] [UNK]",
    "   spaced    out\ttext\nwith lines   ",
    " ".join(f"word{i} longer-sentence, punctuation!" for i in range(400)),
)


def fast_encoder(tokenizer: Any, max_length: int, full: Encode) -> Encode | None:
    """An encoder equal to ``full`` (the tokenizer's own call) on ``tokenizer``'s backend
    ``encode_batch_fast``, or None where there is none or it disagrees on the probe texts."""
    backend = getattr(tokenizer, "_tokenizer", None)
    configure = getattr(tokenizer, "set_truncation_and_padding", None)
    if backend is None or configure is None or not hasattr(backend, "encode_batch_fast"):
        return None
    # Deferred: transformers' enums, as the runners import transformers only in setup().
    from transformers.tokenization_utils_base import TruncationStrategy
    from transformers.utils import PaddingStrategy

    names = [name for name in tokenizer.model_input_names if name in ENCODING_FIELDS]
    if "input_ids" not in names:
        return None
    fields = [(name, ENCODING_FIELDS[name]) for name in names]

    def encode(texts: list[str]) -> Rows:
        configure(
            padding_strategy=PaddingStrategy.DO_NOT_PAD,
            truncation_strategy=TruncationStrategy.LONGEST_FIRST,
            max_length=max_length,
            stride=0,
            pad_to_multiple_of=None,
            padding_side=None,
        )
        split = bool(tokenizer.split_special_tokens)
        if backend.encode_special_tokens != split:
            backend.encode_special_tokens = split
        encodings = backend.encode_batch_fast(texts, add_special_tokens=True)
        return {name: [getattr(e, field) for e in encodings] for name, field in fields}

    probe = list(PROBE_TEXTS)
    try:
        same = _same_rows(encode(probe), full(probe))
    except Exception:  # an unusual tokenizer: the full call stays, never a failed setup
        log.warning(
            "fast token path failed its check; using the full tokenizer call", exc_info=True
        )
        return None
    if not same:
        log.warning("fast token path disagrees with the full tokenizer call; not using it")
        return None
    return encode


def _same_rows(got: Rows, expected: Rows) -> bool:
    return set(got) == set(expected) and all(
        _as_lists(got[key]) == _as_lists(expected[key]) for key in expected
    )


def _as_lists(rows: Sequence[Any]) -> list[list[int]]:
    return [list(row) for row in rows]
