"""Compute only the first token in the last encoder layer of a sequence classifier.

The sequence classifiers of the BERT family (DistilBERT, BERT, RoBERTa, XLM-R, CamemBERT)
read the last layer's hidden state at token 0 (``[CLS]`` or ``<s>``) and nothing else. In
that layer every other token still needs its key and value (token 0 attends to them), but
its query, attention output projection and feed-forward block are computed only to be
thrown away: for DistilBERT-base on review-length texts that is 14% of all multiply-adds
of a forward pass. On a CPU, where the matrix multiplies take ~90% of the time (profiled
in bench/README.md), that is the one remaining saving after length-sorted batching.

The replacement layer returns a ``(batch, 1, hidden)`` tensor, which every head above reads
as ``hidden[:, 0]``. It reuses the original layer's modules, so int8 quantization and
device moves apply to it unchanged. ``install`` checks the pruned model against the full
one on a padded probe batch (the last layer's output at token 0) and keeps the full layer
if they differ or the layout is not one it knows (a future ``transformers`` release may
change it).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn import functional

log = logging.getLogger(__name__)

# Model types whose sequence-classification heads read only token 0 of the last layer.
FIRST_TOKEN_HEADS = frozenset({"distilbert", "bert", "roberta", "xlm-roberta", "camembert"})
# The pruned layer differs from the full one only by summation order in fp32.
TOLERANCE = 1e-4


def _first_token_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The attention mask row of query token 0, in the form SDPA takes."""
    if mask is None:
        return None
    if mask.dim() == 2:  # (batch, keys), 1 = attend: the form older releases pass down
        return mask[:, None, None, :].bool()
    if mask.dim() == 4:  # (batch, 1, queries, keys): boolean, or additive (0 / -inf)
        row = mask[:, :, :1, :]
        return row if row.dtype == torch.bool else row.to(dtype)
    raise ValueError(f"unexpected attention mask shape {tuple(mask.shape)}")


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Multi-head attention of one query per sequence over all keys: (batch, 1, hidden)."""
    batch, _, hidden = query.shape
    head_dim = hidden // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, heads, head_dim).transpose(1, 2)

    out = functional.scaled_dot_product_attention(
        split(query), split(key), split(value), attn_mask=_first_token_mask(mask, query.dtype)
    )
    return out.transpose(1, 2).reshape(batch, 1, hidden)


class FirstTokenLayer(nn.Module):
    """An encoder layer computed for token 0 only: keys and values from every token, the
    query, output projection and feed-forward for token 0 (all that the head reads)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: Any = None, *_: Any, **__: Any
    ) -> torch.Tensor:
        # Any: transformers' layers are typed as nn.Module, whose attributes mypy cannot see.
        layer: Any = self.layer
        return self.first_token(layer, hidden_states, hidden_states[:, :1], attention_mask)

    def first_token(
        self, layer: Any, hidden_states: torch.Tensor, first: torch.Tensor, mask: Any
    ) -> torch.Tensor:
        raise NotImplementedError


class DistilBertFirstToken(FirstTokenLayer):
    """DistilBERT's ``TransformerBlock``, computed for token 0 only."""

    def first_token(
        self, layer: Any, hidden_states: torch.Tensor, first: torch.Tensor, mask: Any
    ) -> torch.Tensor:
        attention = layer.attention
        attended = _attend(
            attention.q_lin(first),
            attention.k_lin(hidden_states),
            attention.v_lin(hidden_states),
            attention.n_heads,
            mask,
        )
        attended = layer.sa_layer_norm(attention.out_lin(attended) + first)
        return layer.output_layer_norm(layer.ffn(attended) + attended)


class BertFirstToken(FirstTokenLayer):
    """A ``BertLayer`` (or RoBERTa's, XLM-R's: the same layout), computed for token 0 only."""

    def first_token(
        self, layer: Any, hidden_states: torch.Tensor, first: torch.Tensor, mask: Any
    ) -> torch.Tensor:
        attention = layer.attention.self
        attended = _attend(
            attention.query(first),
            attention.key(hidden_states),
            attention.value(hidden_states),
            attention.num_attention_heads,
            mask,
        )
        attended = layer.attention.output(attended, first)
        return layer.output(layer.intermediate(attended), attended)


def _encoder_layers(model: nn.Module) -> tuple[nn.ModuleList, type[FirstTokenLayer]] | None:
    """The model's encoder layer list and the first-token class for its layout, if known."""
    config: Any = model.config
    if config.model_type not in FIRST_TOKEN_HEADS or getattr(config, "is_decoder", False):
        return None
    base: Any = model.base_model
    needed: tuple[str, ...]
    if config.model_type == "distilbert":
        layers = getattr(getattr(base, "transformer", None), "layer", None)
        wrapper: type[FirstTokenLayer] = DistilBertFirstToken
        needed = ("attention", "sa_layer_norm", "ffn", "output_layer_norm")
    else:
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        wrapper = BertFirstToken
        needed = ("attention", "intermediate", "output")
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        return None
    if not all(hasattr(layers[-1], name) for name in needed):
        return None
    return layers, wrapper


def _first_token_state(model: nn.Module, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    """The last layer's output at token 0: what the head reads, at the scale of LayerNorm
    (logits of a random-weight model are too small to show a wrong result)."""
    base: Any = model.base_model
    with torch.inference_mode():
        return base(**probe).last_hidden_state[:, 0].float()


def install(model: nn.Module, probe: dict[str, torch.Tensor]) -> bool:
    """Replace the last encoder layer of ``model`` by its first-token form, if it checks out.

    Args:
        model: a sequence classifier in eval mode, fp32, on the CPU (precision and device
            come after: int8 quantizes activations per tensor, so its pruned and full layers
            differ by more than a check could tell from a wrong result).
        probe: a padded batch of at least two sequences of different lengths.

    Returns:
        Whether the model now computes the first token only in its last layer.
    """
    found = _encoder_layers(model)
    if found is None:
        return False
    layers, wrapper = found
    original = layers[-1]
    try:
        expected = _first_token_state(model, probe)
        layers[-1] = wrapper(original)
        got = _first_token_state(model, probe)
        difference = (got - expected).abs().max().item()
        scale = max(1.0, expected.abs().max().item())
    except Exception as error:  # any failure means: keep the full layer
        layers[-1] = original
        log.warning("first-token last layer not used (%s); computing every token", error)
        return False
    if got.shape != expected.shape or difference > TOLERANCE * scale:
        layers[-1] = original
        log.warning(
            "first-token last layer not used: it differs from the full layer by %.2e", difference
        )
        return False
    return True
