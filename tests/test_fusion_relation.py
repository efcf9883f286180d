"""Relation-network specifics: pair geometry, pooling over pairs, the anchored readout."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mmfuse.errors import ConfigError
from mmfuse.features import Features
from mmfuse.fusion.relation import geometry
from mmfuse.registry import FUSIONS
from mmfuse.specs import InputDims

DIMS = {"image": InputDims(token_dim=5, pooled_dim=4, modality="image", token_positions=True),
        "question": InputDims(token_dim=3, pooled_dim=3, modality="text", query=True)}


def build(**options):
    entry = FUSIONS.get("relation")
    torch.manual_seed(0)
    return entry.builder(entry.options.model_validate(options), DIMS).eval()


def scene(positions: list[list[float]], seed: int = 0) -> dict[str, Features]:
    """One row whose image tokens are random features followed by the given (x, y)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(positions)
    tokens = torch.cat([torch.randn(1, n, 3, generator=generator),
                        torch.tensor([positions])], dim=-1)
    question = torch.randn(1, 3, generator=generator)
    one = torch.ones(1, dtype=torch.bool)
    return {"image": Features(tokens, torch.ones(1, n, dtype=torch.bool), tokens.mean(1), one),
            "question": Features(question[:, None], torch.ones(1, 1, dtype=torch.bool),
                                 question, one)}


def test_geometry_gives_offsets_and_distances():
    left = torch.tensor([[[0.0, 0.0]]])
    right = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]]])
    out = geometry(left, right)
    assert out.shape == (1, 1, 3, 3)
    torch.testing.assert_close(out[0, 0, :, :2], right[0])
    torch.testing.assert_close(out[0, 0, :, 2], torch.tensor([5.0, 0.0, 1.0]), atol=1e-3,
                               rtol=0)


def test_geometry_gradient_is_finite_where_positions_coincide():
    left = torch.zeros(1, 1, 2, requires_grad=True)
    geometry(left, torch.zeros(1, 2, 2)).sum().backward()
    assert torch.isfinite(left.grad).all()


def test_relative_position_makes_the_output_depend_on_where_objects_are():
    moved = [[0.0, 0.0], [0.5, 0.5], [-0.5, 0.9]]
    with_geometry = build(pairs="anchored", relative_position=True)
    torch.nn.init.normal_(with_geometry.first_r.weight)
    a, b = scene([[0.0, 0.0], [0.1, 0.2], [0.9, -0.9]]), scene(moved)
    with torch.no_grad():
        assert not torch.allclose(with_geometry(a), with_geometry(b))


def test_anchored_output_ignores_token_order():
    fusion = build(pairs="anchored", relative_position=True, pool=["mean", "attention", "max"])
    feats = scene([[0.0, 0.0], [0.1, 0.2], [0.9, -0.9], [-0.3, 0.4]])
    perm = torch.tensor([2, 0, 3, 1])
    image = feats["image"]
    shuffled = dict(feats, image=Features(image.tokens[:, perm], image.mask, image.pooled,
                                          image.present))
    with torch.no_grad():
        torch.testing.assert_close(fusion(shuffled), fusion(feats))


def test_attention_pool_selects_the_highest_scoring_pair():
    fusion = build(pairs="all", pool="attention")
    g = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    fusion.pair_score = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        fusion.pair_score.weight.copy_(torch.tensor([[100.0, 0.0]]))
        picked = fusion.aggregate("attention", g, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(picked, torch.tensor([[1.0, 0.0]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("how", "expected"), [
    ("sum", [1.0, 1.0]), ("mean", [0.5, 0.5]), ("max", [1.0, 1.0])])
def test_pools_skip_masked_pairs(how, expected):
    fusion = build()
    g = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [50.0, 50.0]]])
    out = fusion.aggregate(how, g, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(out, torch.tensor([expected]))


def test_pool_accepts_one_name_or_a_list_and_widens_f():
    one, two = build(pool="sum"), build(pool=["sum", "attention"])
    assert one.pools == ["sum"] and two.pools == ["sum", "attention"]
    assert two.f[0].in_features == 2 * one.f[0].in_features


def test_unknown_pool_is_rejected():
    with pytest.raises(ValidationError):
        FUSIONS.get("relation").options.model_validate({"pool": ["median"]})


def test_relative_position_needs_tokens_that_carry_positions():
    entry = FUSIONS.get("relation")
    options = entry.options.model_validate({"relative_position": True, "context": "question",
                                            "query": "image"})
    with pytest.raises(ConfigError, match="relative_position needs tokens"):
        entry.builder(options, DIMS)
