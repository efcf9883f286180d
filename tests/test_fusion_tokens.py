"""Token-level fusions (attention, cross_attention, transformer): masks, missing inputs, errors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from mmfuse.errors import ConfigError
from mmfuse.features import Features
from mmfuse.registry import FUSIONS
from mmfuse.specs import InputDims

TOKEN_FUSIONS = ["attention", "cross_attention", "transformer"]
DIMS = {
    "image": InputDims(token_dim=6, pooled_dim=5, modality="image"),
    "question": InputDims(token_dim=4, pooled_dim=3, modality="text", query=True),
    "depth": InputDims(token_dim=5, pooled_dim=4, modality="image"),
}
TOKENS = {"image": 6, "question": 5, "depth": 4}
# Real tokens per row; question row 2 is an empty text (present, but every token is padding).
LENGTHS = {"image": [6, 4, 6], "question": [5, 2, 0], "depth": [4, 4, 1]}
CASES = [(name, count) for name in TOKEN_FUSIONS for count in (2, 3)]
IDS = [f"{name}-{count}in" for name, count in CASES]


def build(name: str, count: int = 3, dims: dict | None = None, **options) -> nn.Module:
    dims = dims or dict(list(DIMS.items())[:count])
    entry = FUSIONS.get(name)
    torch.manual_seed(0)
    return entry.builder(entry.options.model_validate(options), dims).eval()


def make_features(count: int = 3, lengths: dict | None = None, seed: int = 0) -> dict:
    lengths = lengths or LENGTHS
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in list(DIMS)[:count]:
        rows = len(lengths[name])
        tokens = torch.randn(rows, TOKENS[name], DIMS[name].token_dim, generator=generator)
        mask = torch.arange(TOKENS[name]) < torch.tensor(lengths[name]).unsqueeze(1)
        pooled = torch.randn(rows, DIMS[name].pooled_dim, generator=generator)
        out[name] = Features(tokens, mask, pooled, torch.ones(rows, dtype=torch.bool))
    return out


def copy(features: dict) -> dict:
    return {n: Features(f.tokens.clone(), f.mask.clone(), f.pooled.clone(), f.present.clone())
            for n, f in features.items()}


@pytest.mark.parametrize(("name", "count"), CASES, ids=IDS)
def test_padded_tokens_do_not_change_the_output(name, count):
    fusion = build(name, count)
    feats = make_features(count)
    with torch.no_grad():
        out = fusion(feats)
        padded = copy(feats)
        for f in padded.values():
            f.tokens[~f.mask] = 1e3 * torch.randn(int((~f.mask).sum()), f.tokens.shape[-1])
        # Not bitwise: a busy machine can change how BLAS splits a product across threads.
        torch.testing.assert_close(fusion(padded), out)
        real = copy(feats)
        real["image"].tokens[1, 0] += 1.0  # a real token: this must matter
        assert not torch.allclose(fusion(real)[1], out[1])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "count"), CASES, ids=IDS)
def test_padding_gives_the_same_output_as_cutting_the_padding_off(name, count):
    """Masking must hide the padded positions, not only zero them."""
    lengths = {"image": [4, 4, 4], "question": [3, 3, 3], "depth": [2, 2, 2]}
    fusion = build(name, count)
    feats = make_features(count, lengths)
    cut = {n: Features(f.tokens[:, : lengths[n][0]], f.mask[:, : lengths[n][0]], f.pooled,
                       f.present) for n, f in feats.items()}
    with torch.no_grad():
        torch.testing.assert_close(fusion(feats), fusion(cut), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TOKEN_FUSIONS)
def test_missing_input_tokens_do_not_matter_for_its_row(name):
    fusion = build(name, 3)
    feats = make_features(3)
    feats["depth"].present[1] = False
    with torch.no_grad():
        out = fusion(feats)
        changed = copy(feats)
        changed["depth"].tokens[1] = 1e3 * torch.randn_like(changed["depth"].tokens[1])
        changed["depth"].pooled[1] = -1e3
        changed["depth"].mask[1] = True
        torch.testing.assert_close(fusion(changed), out)
        changed["depth"].tokens[0, 0] += 1.0  # row 0 has the input: there it must matter
        assert not torch.allclose(fusion(changed)[0], out[0])


def test_attention_weights_are_zero_on_padding_and_sum_to_one():
    fusion = build("attention", 3)
    feats = make_features(3)
    feats["depth"].present[2] = False
    with torch.no_grad():
        fusion(feats)
    assert set(fusion.last_attention) == {"image", "depth"}  # question is the query
    for name, weights in fusion.last_attention.items():
        assert weights.shape == (3, 1 + TOKENS[name])
        torch.testing.assert_close(weights.sum(-1), torch.ones(3))
        padded = ~feats[name].mask | ~feats[name].present.unsqueeze(-1)
        assert (weights[:, 1:][padded] == 0).all(), name


def test_attention_concentrates_on_the_token_the_query_selects():
    # Three image tokens 4*e_j. The query -8 * (1 - e_k) saturates every channel but k to -1,
    # so only token k scores high: p_k ~ 1 and u_1 = u_0 + p V ~ q + 4 e_k.
    dims = {"image": InputDims(token_dim=3, pooled_dim=2, modality="image"),
            "question": InputDims(token_dim=1, pooled_dim=3, modality="text", query=True)}
    fusion = build("attention", dims=dims, dim=3, attention_dim=3, hops=1, hidden=[])
    glimpse = fusion.hops[0]["image"]
    with torch.no_grad():
        for linear in (fusion.start, fusion.slots.values["image"], glimpse.memory, glimpse.state):
            linear.weight.copy_(torch.eye(3))
            if linear.bias is not None:
                linear.bias.zero_()
        fusion.slots.summaries["image"].weight.zero_()
        fusion.slots.summaries["image"].bias.zero_()
        glimpse.score.weight.fill_(10.0)
    query = -8.0 * (1 - torch.eye(3))  # row k selects token k
    image = Features(4.0 * torch.eye(3).expand(3, 3, 3), torch.ones(3, 3, dtype=torch.bool),
                     torch.zeros(3, 2), torch.ones(3, dtype=torch.bool))
    question = Features(torch.zeros(3, 1, 1), torch.ones(3, 1, dtype=torch.bool), query,
                        torch.ones(3, dtype=torch.bool))
    with torch.no_grad():
        out = fusion({"image": image, "question": question})
    weights = fusion.last_attention["image"]
    assert weights[:, 1:].argmax(-1).tolist() == [0, 1, 2]
    assert (weights[:, 1:].diagonal() > 0.99).all()
    torch.testing.assert_close(out, query + 4.0 * torch.eye(3), rtol=0, atol=1e-2)


def test_transformer_token_order_matters_but_padding_does_not():
    fusion = build("transformer", 2)
    feats = make_features(2)
    with torch.no_grad():
        out = fusion(feats)
        swapped = copy(feats)
        swapped["question"].tokens[1, [0, 1]] = feats["question"].tokens[1, [1, 0]]
        assert not torch.allclose(fusion(swapped)[1], out[1], atol=1e-4)
        padded = copy(feats)
        padded["question"].tokens[1, 2:] = 1e3 * torch.randn(3, 4)  # row 1 has 2 real tokens
        torch.testing.assert_close(fusion(padded), out)


def test_transformer_sequence_longer_than_max_tokens_is_a_config_error():
    fusion = build("transformer", 2, max_tokens=5)
    with pytest.raises(ConfigError, match=r"'image' has 6 tokens.*max_tokens to at least 6"):
        fusion(make_features(2))


@pytest.mark.parametrize("name", ["cross_attention", "transformer"])
def test_heads_must_divide_dim(name):
    with pytest.raises(ValidationError, match="heads=3 must divide dim=128"):
        FUSIONS.get(name).options.model_validate({"heads": 3})


def test_attention_query_option_picks_the_guiding_input():
    assert build("attention", 3).query == "question"
    assert build("attention", 3, query="depth").context == ["image", "question"]
    with pytest.raises(ConfigError, match="query='sound' names no input"):
        build("attention", 3, query="sound")
    with pytest.raises(ConfigError, match="at least two inputs"):
        build("attention", 1)
