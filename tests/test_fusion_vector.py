"""Known-number and behaviour tests of the vector fusions: gated, mlb, mfb, mutan, tensor,
low_rank_tensor and late (both modes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmfuse.errors import ConfigError
from mmfuse.features import Features
from mmfuse.registry import FUSIONS
from mmfuse.specs import InputDims

A = torch.tensor([[1.0, 2.0], [0.5, -0.5]])
B = torch.tensor([[3.0, -1.0], [100.0, 100.0]])
C = torch.tensor([[0.3, -0.7], [-2.0, 0.1]])


def build(name: str, dims: dict[str, InputDims], **options) -> nn.Module:
    entry = FUSIONS.get(name)
    return entry.builder(entry.options.model_validate(options), dims).eval()


def dims_of(**pooled: int) -> dict[str, InputDims]:
    return {n: InputDims(token_dim=3, pooled_dim=p, modality="image") for n, p in pooled.items()}


def feats(present: dict[str, list[bool]] | None = None, **pooled: torch.Tensor) -> dict:
    """Features with the given pooled vectors (and random tokens); rows all present by default."""
    present = present or {}
    generator = torch.Generator().manual_seed(0)
    out = {}
    for name, x in pooled.items():
        rows = x.shape[0]
        tokens = torch.randn(rows, 2, 3, generator=generator)
        flags = torch.tensor(present.get(name, [True] * rows))
        out[name] = Features(tokens, torch.ones(rows, 2, dtype=torch.bool), x, flags)
    return out


def set_linear(layer: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else bias)


# --- gated ---------------------------------------------------------------------------------------


def test_gated_two_inputs_is_the_papers_sigmoid_gate():
    fusion = build("gated", dims_of(a=2, b=2), dim=2)
    set_linear(fusion.project.proj["a"][0], torch.eye(2))
    set_linear(fusion.project.proj["b"][0], torch.eye(2))
    set_linear(fusion.gate, torch.cat([torch.eye(2), -torch.eye(2)], dim=1))  # z = sig(a - b)
    out = fusion(feats({"b": [True, False]}, a=A, b=B))
    z = torch.sigmoid(A[0] - B[0])
    expected_row0 = z * torch.tanh(A[0]) + (1 - z) * torch.tanh(B[0])
    torch.testing.assert_close(out[0], expected_row0)
    torch.testing.assert_close(out[1], torch.tanh(A[1]))  # b missing: all weight on a


def test_gated_many_inputs_gates_sum_to_one_and_skip_missing():
    torch.manual_seed(0)
    fusion = build("gated", dims_of(a=2, b=2, c=2), dim=4)
    gates = fusion.gates(feats({"b": [True, False]}, a=A, b=B, c=C))
    assert gates.shape == (2, 4, 3)
    torch.testing.assert_close(gates.sum(-1), torch.ones(2, 4))
    assert (gates[1, :, 1] == 0).all() and (gates[0] > 0).all()


# --- bilinear ------------------------------------------------------------------------------------


def test_mlb_with_identity_projections_is_product_of_tanh():
    fusion = build("mlb", dims_of(a=2, b=2), joint_dim=2, dim=2)
    set_linear(fusion.factors["a"][0], torch.eye(2))
    set_linear(fusion.factors["b"][0], torch.eye(2))
    set_linear(fusion.out, torch.eye(2))
    out = fusion(feats({"b": [True, False]}, a=A, b=B))
    torch.testing.assert_close(out[0], torch.tanh(A[0]) * torch.tanh(B[0]))
    torch.testing.assert_close(out[1], torch.tanh(A[1]))  # b missing: its factor is ones


def test_mfb_sum_pools_consecutive_factors_then_normalises():
    torch.manual_seed(0)
    fusion = build("mfb", dims_of(a=2, b=2), factor=2, dim=3)
    f = feats(a=A, b=B)
    out = fusion(f)
    product = fusion.factors["a"](A) * fusion.factors["b"](B)  # [2, 6]
    z = product[:, 0::2] + product[:, 1::2]  # pairs (0,1), (2,3), (4,5) of each output
    z = z.sign() * z.abs().sqrt()
    torch.testing.assert_close(out, z / z.norm(dim=-1, keepdim=True))


def test_mfb_output_is_l2_normalised():
    torch.manual_seed(0)
    fusion = build("mfb", dims_of(a=2, b=2, c=2))
    out = fusion(feats({"c": [False, True]}, a=A, b=B, c=C))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))


def test_mutan_sums_rank_slices_and_missing_input_is_neutral():
    torch.manual_seed(0)
    fusion = build("mutan", dims_of(a=2, b=2), input_dim=3, rank=4, dim=5)
    out = fusion(feats({"b": [True, False]}, a=A, b=B))
    fa, fb = fusion.factors["a"](A), fusion.factors["b"](B)
    torch.testing.assert_close(out[0], (fa[0] * fb[0]).view(4, 5).sum(0))
    torch.testing.assert_close(out[1], fa[1].view(4, 5).sum(0))


# --- tensor --------------------------------------------------------------------------------------


def with_one(z: torch.Tensor) -> torch.Tensor:
    return torch.cat([z, torch.ones(z.shape[0], 1)], dim=-1)


def test_tensor_fusion_is_the_outer_product_of_vectors_with_one():
    torch.manual_seed(0)
    fusion = build("tensor", dims_of(a=2, b=2, c=2), dim=2, hidden=[])
    assert fusion.out_dim == fusion.tensor_dim == 3 ** 3
    out = fusion(feats({"b": [True, False]}, a=A, b=B, c=C))
    za, zb, zc = (with_one(fusion.project.proj[n](x)) for n, x in (("a", A), ("b", B), ("c", C)))
    zb[1, :2] = 0.0  # b missing in row 1: [0, 0, 1]
    expected = torch.einsum("bi,bj,bk->bijk", za, zb, zc).flatten(1)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[:, -1], torch.ones(2))  # the constant term


def test_tensor_fusion_mlp_follows_the_product():
    fusion = build("tensor", dims_of(a=4, b=3), dim=5, hidden=[7])
    assert fusion.mlp[0].in_features == 6 * 6 and fusion.out_dim == 7


@pytest.mark.parametrize("rank", [1, 3])
def test_low_rank_equals_the_full_weight_tensor(rank):
    torch.manual_seed(0)
    fusion = build("low_rank_tensor", dims_of(a=2, b=3), rank=rank, dim=4)
    with torch.no_grad():
        fusion.bias.normal_()  # starts at zero, which would hide a dropped bias
    b3 = torch.tensor([[1.0, -1.0, 0.5], [2.0, 0.0, -3.0]])
    out = fusion(feats({"b": [True, False]}, a=A, b=b3))

    def factor(name: str) -> torch.Tensor:  # [d + 1, rank, out]: the factor acting on [x; 1]
        layer = fusion.factors[name]
        full = torch.cat([layer.weight.T, layer.bias[None]], dim=0)
        return full.unflatten(-1, (rank, 4))

    weight = torch.einsum("r,iro,jro->ijo", fusion.rank_weights, factor("a"), factor("b"))
    xb = with_one(b3)
    xb[1, :3] = 0.0  # b missing in row 1
    expected = torch.einsum("bi,bj,ijo->bo", with_one(A), xb, weight) + fusion.bias
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5)


# --- late ----------------------------------------------------------------------------------------


def test_late_weights_sum_to_one_and_missing_input_weighs_zero():
    fusion = build("late", dims_of(a=2, b=2, c=2), hidden=[], dim=2)
    with torch.no_grad():
        fusion.weight_logits.copy_(torch.tensor([1.0, 2.0, 3.0]).log())
    present = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    w = fusion.weights(present)
    torch.testing.assert_close(w[0], torch.tensor([1 / 6, 2 / 6, 3 / 6]))
    torch.testing.assert_close(w[1], torch.tensor([1 / 4, 0.0, 3 / 4]))
    assert (w[2] == 0).all()


def test_late_equals_weighted_per_input_linear_heads():
    torch.manual_seed(0)
    fusion = build("late", dims_of(a=2, b=2), hidden=[8], dim=4)
    with torch.no_grad():
        fusion.weight_logits.copy_(torch.tensor([0.3, -1.2]))
    head = nn.Linear(4, 3)
    out = head(fusion(feats(a=A, b=B)))
    w = torch.softmax(torch.tensor([0.3, -1.2]), dim=0)
    per_input = w[0] * head(fusion.nets["a"](A)) + w[1] * head(fusion.nets["b"](B))
    torch.testing.assert_close(out, per_input)


def early_feats(rows: int = 3) -> dict[str, Features]:
    generator = torch.Generator().manual_seed(1)
    out = {}
    for name, n_tokens in (("a", 4), ("b", 2), ("c", 3)):
        tokens = torch.randn(rows, n_tokens, 3, generator=generator).requires_grad_()
        mask = torch.ones(rows, n_tokens, dtype=torch.bool)
        out[name] = Features(tokens, mask, torch.zeros(rows, 2),
                             torch.ones(rows, dtype=torch.bool))
    return out


def test_early_mode_shape_and_gradients_reach_every_input():
    torch.manual_seed(0)
    fusion = build("late", dims_of(a=2, b=2, c=2), mode="early", dim=8, heads=2)
    f = early_feats()
    out = fusion(f)
    assert out.shape == (3, 8) and fusion.out_dim == 8
    out.square().sum().backward()
    for name, x in f.items():
        assert x.tokens.grad.abs().sum() > 0, name
    for name, param in fusion.named_parameters():
        assert param.grad is not None, name


def test_early_mode_ignores_missing_inputs_and_padding():
    torch.manual_seed(0)
    fusion = build("late", dims_of(a=2, b=2, c=2), mode="early", dim=8, heads=2)
    f = early_feats()
    f["b"].present[1] = False
    f["a"].mask[2, 3] = False
    out = fusion(f)
    with torch.no_grad():
        f["b"].tokens[1] = 1e6
        f["a"].tokens[2, 3] = 1e6
        f["c"].tokens[0] += 1.0
        again = fusion(f)
    torch.testing.assert_close(again[1:], out[1:])
    assert not torch.allclose(again[0], out[0])


@pytest.mark.parametrize("grad", [True, False])  # no_grad takes the fused fast path
def test_early_mode_row_without_tokens_is_finite(grad):
    fusion = build("late", dims_of(a=2, b=2, c=2), mode="early", dim=8, heads=2)
    f = early_feats()
    f["a"].present[0] = False
    f["b"].mask[0] = False
    f["c"].present[0] = False
    with torch.set_grad_enabled(grad):
        out = fusion(f)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], torch.zeros(8))


def test_early_mode_rejects_dim_not_divisible_by_heads():
    with pytest.raises(ConfigError, match="heads"):
        build("late", dims_of(a=2, b=2), mode="early", dim=10, heads=4)
