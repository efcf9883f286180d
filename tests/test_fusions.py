"""Smoke tests over every registered fusion, plus known-number checks (mmfuse.fusion)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmfuse.features import Features
from mmfuse.fusion.base import Fusion
from mmfuse.registry import FUSIONS
from mmfuse.specs import EncoderSpec, InputDims, TargetSpec

BATCH = 4
POOLED = {"image": 5, "question": 3, "hint": 4}
MODALITY = {"image": "image", "question": "text", "hint": "text"}
TOKENS = 3


def input_dims(count: int) -> dict[str, InputDims]:
    names = list(POOLED)[:count]
    return {n: InputDims(token_dim=6, pooled_dim=POOLED[n], modality=MODALITY[n],
                         film_channels=(4, 4) if n == "image" else None,
                         token_positions=n == "image", tabular=False,
                         query=MODALITY[n] == "text") for n in names}


# Option sets beyond the defaults that the smoke tests also run, under their own test ids.
VARIANTS = {
    "relation[anchored,geometry,all-pools]": ("relation", {
        "pairs": "anchored", "relative_position": True,
        "pool": ["sum", "mean", "max", "attention"]}),
    "relation[all-pairs,geometry,attention]": ("relation", {
        "relative_position": True, "pool": ["attention"]}),
}
NAMES = FUSIONS.names() + list(VARIANTS)


def build(name: str, dims: dict[str, InputDims], **options) -> nn.Module:
    name, preset = VARIANTS.get(name, (name, {}))
    entry = FUSIONS.get(name)
    return entry.builder(entry.options.model_validate({**preset, **options}), dims)


def features(dims: dict[str, InputDims], seed: int = 0) -> dict[str, Features]:
    """Random Features whose tokens and pooled vectors are leaves that require gradients.

    Text inputs have their last token padded in odd rows.
    """
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, d in dims.items():
        pooled = torch.randn(BATCH, d.pooled_dim, generator=generator).requires_grad_()
        tokens = torch.randn(BATCH, TOKENS, d.token_dim, generator=generator).requires_grad_()
        mask = torch.ones(BATCH, TOKENS, dtype=torch.bool)
        if d.modality == "text":
            mask[1::2, -1] = False
        out[name] = Features(tokens, mask, pooled, torch.ones(BATCH, dtype=torch.bool))
    return out


def input_grad(f: Features) -> float:
    return sum(float(t.grad.abs().sum()) for t in (f.tokens, f.pooled) if t.grad is not None)


def test_every_fusion_is_registered():
    assert {"concat", "sum", "product"} <= set(FUSIONS.names())
    for entry in FUSIONS.entries():
        assert entry.summary, f"{entry.name} has no docstring summary"
        assert issubclass(entry.builder, Fusion), f"{entry.name} does not subclass Fusion"


@pytest.mark.parametrize("name", NAMES)
def test_every_fusion_declares_its_traits(name):
    """Only FiLM is serial (the query modulates the image encoder); only the anchored relation
    exposes attention over its context's tokens."""
    traits = build(name, input_dims(3)).traits
    assert traits.serial == (("image", "question") if name == "film" else None)
    anchored = name == "relation[anchored,geometry,all-pools]"
    assert traits.attention_over == ("image" if anchored else None)


CASES = [(name, count) for name in NAMES for count in (2, 3)]
IDS = [f"{name}-{count}in" for name, count in CASES]


@pytest.mark.parametrize(("name", "count"), CASES, ids=IDS)
def test_output_shape(name, count):
    torch.manual_seed(0)
    dims = input_dims(count)
    fusion = build(name, dims)
    out = fusion(features(dims))
    assert isinstance(fusion.out_dim, int) and fusion.out_dim > 0
    assert out.shape == (BATCH, fusion.out_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "count"), CASES, ids=IDS)
def test_gradients_reach_every_input(name, count):
    torch.manual_seed(0)
    dims = input_dims(count)
    fusion = build(name, dims)
    feats = features(dims)
    fusion(feats).square().sum().backward()
    serial_source = (fusion.traits.serial or (None, None))[1]
    for input_name, f in feats.items():
        if input_name == serial_source:
            continue  # reaches the target encoder instead: see test_fusion_in_a_model
        assert input_grad(f) > 0, f"no gradient reaches {input_name}"
    for param_name, param in fusion.named_parameters():
        if serial_source is not None and param_name.startswith("generator"):
            continue
        assert param.grad is not None, f"no gradient for {param_name}"


@pytest.mark.parametrize(("name", "count"), CASES, ids=IDS)
def test_padded_tokens_do_not_change_the_output(name, count):
    torch.manual_seed(0)
    dims = input_dims(count)
    fusion = build(name, dims).eval()
    feats = features(dims)
    with torch.no_grad():
        before = fusion(feats)
        for f in feats.values():
            f.tokens[~f.mask] = 1e4
        after = fusion(feats)
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize(("name", "count"), CASES, ids=IDS)
def test_missing_input_is_ignored_for_its_row(name, count):
    torch.manual_seed(0)
    dims = input_dims(count)
    fusion = build(name, dims).eval()
    missing, row = "question", 1
    feats = features(dims)
    feats[missing].present[row] = False
    out = fusion(feats)
    assert torch.isfinite(out).all()

    changed = features(dims)
    changed[missing].present[row] = False
    with torch.no_grad():
        changed[missing].pooled[row] = 1e3
        changed[missing].tokens[row] = 1e3
        changed[missing].pooled[0] += 1.0  # row 0 has the input: there it must matter
        changed[missing].tokens[0] += 1.0
        again = fusion(changed)
    torch.testing.assert_close(again[row], out[row].detach())
    if (fusion.traits.serial or (None, None))[1] != missing:
        assert not torch.allclose(again[0], out[0].detach())


@pytest.mark.parametrize("name", NAMES)
def test_row_with_every_input_missing_is_finite(name):
    dims = input_dims(2)
    fusion = build(name, dims).eval()
    feats = features(dims)
    for f in feats.values():
        f.present[0] = False
    assert torch.isfinite(fusion(feats)).all()


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_independent(name):
    dims = input_dims(3)
    fusion = build(name, dims).eval()
    feats = features(dims)
    with torch.no_grad():
        together = fusion(feats)
        alone = fusion({n: Features(f.tokens[2:3], f.mask[2:3], f.pooled[2:3], f.present[2:3])
                        for n, f in feats.items()})
    torch.testing.assert_close(together[2:3], alone)


@pytest.mark.parametrize("name", NAMES)
def test_fusion_in_a_model_trains_every_encoder(name):
    """Through MultimodalModel (serial fusions such as FiLM drive the encoders themselves)."""
    from mmfuse.config import load_config
    from mmfuse.model import MultimodalModel

    torch.manual_seed(0)
    fusion_type, preset = VARIANTS.get(name, (name, {}))
    config = load_config({
        "inputs": [
            {"name": "image", "type": "image",
             "encoder": {"type": "cnn", "channels": [4, 4], "dim": 8}},
            {"name": "question", "type": "text",
             "encoder": {"type": "gru", "embedding_dim": 4, "hidden_size": 6}},
        ],
        "fusion": {"type": fusion_type, **preset},
        "outputs": [{"name": "answer", "type": "category"}],
    })
    model = MultimodalModel(config, {"image": EncoderSpec("image", channels=3, size=(16, 16)),
                                     "question": EncoderSpec("text", vocab_size=9, pad_id=0)},
                            {"answer": TargetSpec(labels=["a", "b", "c"])})
    ids = torch.tensor([[3, 4, 5], [6, 7, 0]])
    inputs = {
        "image": {"pixels": torch.randn(2, 3, 16, 16), "index": torch.tensor([0, 0, 1])},
        "question": {"ids": ids, "mask": ids != 0, "index": torch.tensor([0, 1, 1])},
    }
    logits = model(inputs)["answer"]
    assert logits.shape == (3, 3)
    logits.square().sum().backward()
    for input_name, encoder in model.encoders.items():  # token fusions skip pooled heads
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in encoder.parameters()), f"{name}: nothing trains {input_name}"
    for part in (model.fusion, model.heads):
        for param_name, param in part.named_parameters():
            assert param.grad is not None, f"{name}: no gradient for {param_name}"


# --- known numbers -------------------------------------------------------------------------------


def fixed_elementwise(name: str, activation: str) -> nn.Module:
    """A 2-input sum/product fusion of width 2 whose projections are set by hand."""
    dims = {"a": InputDims(token_dim=1, pooled_dim=2), "b": InputDims(token_dim=1, pooled_dim=2)}
    fusion = build(name, dims, dim=2, activation=activation)
    with torch.no_grad():
        proj_a = fusion.project.proj["a"][0]
        proj_b = fusion.project.proj["b"][0]
        proj_a.weight.copy_(torch.eye(2))
        proj_a.bias.zero_()
        proj_b.weight.copy_(2 * torch.eye(2))
        proj_b.bias.copy_(torch.tensor([1.0, -1.0]))
    return fusion


def two_inputs(present_b: list[bool]) -> dict[str, Features]:
    a = torch.tensor([[1.0, 2.0], [0.5, -0.5]])
    b = torch.tensor([[3.0, -1.0], [100.0, 100.0]])
    ones = torch.ones(2, dtype=torch.bool)

    def feats(x: torch.Tensor, present: torch.Tensor) -> Features:
        return Features(x.unsqueeze(1), torch.ones(2, 1, dtype=torch.bool), x, present)

    return {"a": feats(a, ones), "b": feats(b, torch.tensor(present_b))}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # a = [1, 2], W_b b + c = 2 * [3, -1] + [1, -1] = [7, -3]
        ("sum", [[8.0, -1.0], [0.5, -0.5]]),
        ("product", [[7.0, -6.0], [0.5, -0.5]]),
    ],
)
def test_elementwise_known_numbers(name, expected):
    fusion = fixed_elementwise(name, activation="none")
    out = fusion(two_inputs(present_b=[True, False]))  # row 2: b missing
    torch.testing.assert_close(out, torch.tensor(expected))


@pytest.mark.parametrize(
    ("name", "combine"),
    [("sum", torch.add), ("product", torch.mul)],
)
def test_elementwise_tanh_known_numbers(name, combine):
    fusion = fixed_elementwise(name, activation="tanh")
    out = fusion(two_inputs(present_b=[True, True]))
    a = torch.tensor([[1.0, 2.0], [0.5, -0.5]])
    b = torch.tensor([[7.0, -3.0], [201.0, 199.0]])
    torch.testing.assert_close(out, combine(torch.tanh(a), torch.tanh(b)))


def test_concat_without_mlp_concatenates_vectors_and_presence_flags():
    dims = {"a": InputDims(token_dim=1, pooled_dim=2), "b": InputDims(token_dim=1, pooled_dim=2)}
    fusion = build("concat", dims, hidden=[])
    assert fusion.out_dim == 2 + 2 + 2
    out = fusion(two_inputs(present_b=[True, False]))
    torch.testing.assert_close(out, torch.tensor([
        [1.0, 2.0, 3.0, -1.0, 1.0, 1.0],
        [0.5, -0.5, 0.0, 0.0, 1.0, 0.0],  # b is missing: zeroed, flag 0
    ]))


def test_out_dim_follows_options():
    dims = input_dims(2)
    assert build("concat", dims, hidden=[16, 7]).out_dim == 7
    assert build("sum", dims, dim=9).out_dim == 9
    assert build("product", dims, dim=9, hidden=[5]).out_dim == 5
