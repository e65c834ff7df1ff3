"""The first-token last layer gives the full model's logits, or is not installed."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from engine.runners import first_token

SMALL = {"vocab_size": 120, "max_position_embeddings": 64}


def distilbert() -> torch.nn.Module:
    config = DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=4, **SMALL)
    return DistilBertForSequenceClassification(config)


def bert() -> torch.nn.Module:
    config = BertConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **SMALL
    )
    return BertForSequenceClassification(config)


def roberta() -> torch.nn.Module:
    config = RobertaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        pad_token_id=1,
        **{**SMALL, "max_position_embeddings": 70},
    )
    return RobertaForSequenceClassification(config)


def padded_batch(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids 5.. (never the pad id), right-padded, with the attention mask."""
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    ids = torch.full((len(lengths), longest), 1, dtype=torch.long)
    mask = torch.zeros((len(lengths), longest), dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(5, 120, (length,), generator=generator)
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def build(factory, attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = factory()
    model.config._attn_implementation = attention
    return model.eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("factory", [distilbert, bert, roberta])
def test_pruned_model_gives_the_full_models_logits(factory, attention: str) -> None:
    model = build(factory, attention)
    batches = [padded_batch([3, 17, 9, 40], seed=1), padded_batch([12, 12], seed=2)]
    with torch.inference_mode():
        expected = [model(**batch).logits for batch in batches]

    assert first_token.install(model, padded_batch([2, 6]))

    wrappers = (first_token.DistilBertFirstToken, first_token.BertFirstToken)
    assert sum(isinstance(module, wrappers) for module in model.modules()) == 1
    with torch.inference_mode():
        got = [model(**batch).logits for batch in batches]
    for want, have in zip(expected, got, strict=True):
        assert torch.allclose(want, have, atol=1e-5), (want - have).abs().max()


def test_a_padded_row_is_scored_as_if_alone() -> None:
    """The mask must reach the first-token attention: padding may not change a score."""
    model = build(distilbert, "sdpa")
    assert first_token.install(model, padded_batch([2, 6]))
    batch = padded_batch([5, 30], seed=3)
    alone = {key: value[:1, :5] for key, value in batch.items()}
    with torch.inference_mode():
        together = model(**batch).logits[0]
        single = model(**alone).logits[0]
    assert torch.allclose(together, single, atol=1e-5)


def test_a_model_whose_head_reads_other_tokens_is_left_whole() -> None:
    config = AlbertConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, **SMALL
    )
    model = AlbertForSequenceClassification(config).eval()
    assert not first_token.install(model, padded_batch([2, 6]))


def test_an_unknown_layout_keeps_the_full_layer() -> None:
    model = build(distilbert, "sdpa")
    last = model.distilbert.transformer.layer[-1]
    del last.ffn  # as if a future release renamed it
    assert not first_token.install(model, padded_batch([2, 6]))
    assert model.distilbert.transformer.layer[-1] is last


def test_a_wrong_result_keeps_the_full_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(bert, "sdpa")
    last = model.bert.encoder.layer[-1]
    original = first_token._attend
    monkeypatch.setattr(first_token, "_attend", lambda *args: original(*args) * 1.5)
    assert not first_token.install(model, padded_batch([2, 6]))
    assert model.bert.encoder.layer[-1] is last


def test_the_runner_prunes_by_setting_and_scores_the_same(tiny_text_model) -> None:
    from core.config import Settings
    from core.models.registry import Registry
    from engine.runners import build_runner

    entry = {"task": "text-classification", "backend": "transformers"}
    registry = Registry.from_mapping(
        {"models": {"tiny": {**entry, "source": str(tiny_text_model)}}},
        base_dir=tiny_text_model,
    )
    texts = ["good film", "a long and boring plot " * 20, "bad", "great music and story " * 5]
    scored = {}
    for flag in (False, True):
        runner = build_runner(registry.get("tiny"), Settings(first_token_last_layer=flag))
        runner.setup("cpu")
        assert runner.first_token_only is flag
        scored[flag] = runner.predict(texts)
    for full, pruned in zip(scored[False], scored[True], strict=True):
        assert full.label == pruned.label
        assert abs(full.score - pruned.score) < 1e-5
