"""Cached frozen features: once per unique item, float16, the same answers as the live encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mmfuse
from conftest import make_shapes_qa
from media import moving_square, write_video
from mmfuse.config import load_config
from mmfuse.data import features as features_module
from mmfuse.data.features import FeatureColumn, cache_frozen_features
from mmfuse.data.table import as_table
from mmfuse.errors import ConfigError
from mmfuse.pipeline import Pipeline


def image_config(**input_options) -> dict:
    image = {"name": "image", "type": "image", "encoder": {"type": "efficientnet_lite0"},
             "preprocess": {"size": 64}, **input_options}
    return {"inputs": [image], "fusion": "concat",
            "outputs": [{"name": "answer", "type": "category"}],
            "training": {"epochs": 2, "batch_size": 16, "valid_fraction": 0.25}}


@pytest.fixture
def shapes(tmp_path):
    return make_shapes_qa(tmp_path / "data", 24)


def fitted(config: dict, table) -> tuple[Pipeline, object]:
    pipeline = Pipeline.from_config(load_config(config))
    return pipeline, pipeline.fit(as_table(str(table)))


def assert_cached_logits_match(pipeline: Pipeline, data, cached, output: str) -> None:
    """The model's logits of every row from cached features equal those of the live encoder,
    within float16's relative 1e-3."""
    rows = np.arange(len(data))
    live, _ = pipeline.batch(data, rows)
    stored, _ = pipeline.batch(cached, rows)
    with torch.no_grad():
        pipeline.model.eval()
        torch.testing.assert_close(pipeline.model(stored)[output],
                                   pipeline.model(live)[output], rtol=1e-3, atol=1e-3)


def test_frozen_features_are_cached_as_float16_and_agree_with_the_live_encoder(shapes):
    pipeline, data = fitted(image_config(), shapes)
    [cached] = cache_frozen_features(pipeline, [data])
    column = cached.inputs["image"]
    assert isinstance(column, FeatureColumn) and column.names == ("grid", "early")
    assert column.items[0].dtype == np.float16 and len(column.items[0]) == 24
    rows = np.arange(len(data))
    live_inputs, _ = pipeline.batch(data, rows)
    cached_inputs, _ = pipeline.batch(cached, rows)
    encoder = pipeline.model.encoders["image"].eval()
    with torch.no_grad():
        live = encoder(live_inputs["image"]["pixels"])
        from_cache = encoder.from_frozen(**cached_inputs["image"]["frozen"])
        live_logits = pipeline.model(live_inputs)["answer"]
        cached_logits = pipeline.model(cached_inputs)["answer"]
    # float16 keeps ~3 significant digits: the stated tolerance is a relative 1e-3 (and an
    # absolute 1e-3 for the layer-normed early stages, values of order 1 pooled after storing)
    torch.testing.assert_close(from_cache.tokens, live.tokens, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(from_cache.pooled, live.pooled, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(cached_logits, live_logits, rtol=1e-3, atol=1e-3)


def test_a_second_run_on_the_same_data_encodes_nothing(shapes, monkeypatch):
    pipeline, data = fitted(image_config(), shapes)
    calls = []
    real = features_module.run_frozen
    monkeypatch.setattr(features_module, "run_frozen",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    cache_frozen_features(pipeline, [data])
    assert calls == [1]
    again, data_again = fitted(image_config(), shapes)
    [cached] = cache_frozen_features(again, [data_again])
    assert calls == [1] and isinstance(cached.inputs["image"], FeatureColumn)


def test_the_key_changes_with_the_preprocessing(shapes, monkeypatch):
    calls = []
    real = features_module.run_frozen
    monkeypatch.setattr(features_module, "run_frozen",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    for size in (64, 64, 72):
        config = image_config()
        config["inputs"][0]["preprocess"]["size"] = size
        pipeline, data = fitted(config, shapes)
        cache_frozen_features(pipeline, [data])
    assert len(calls) == 2


def test_auto_caches_exactly_when_frozen_and_not_augmented(shapes):
    cases = [({}, True), ({"cache_features": False}, False),
             ({"preprocess": {"size": 64, "flip_horizontal": 0.5}}, False),
             ({"encoder": {"type": "efficientnet_lite0", "freeze": False}}, False),
             ({"encoder": {"type": "efficientnet_lite0", "train_last_blocks": 1}}, True),
             ({"encoder": {"type": "efficientnet_lite0", "dim": 16}}, True)]
    for options, expected in cases:
        pipeline, data = fitted(image_config(**options), shapes)
        [cached] = cache_frozen_features(pipeline, [data])
        assert isinstance(cached.inputs["image"], FeatureColumn) == expected, options


def test_forcing_the_cache_where_it_cannot_apply_names_why(shapes):
    pipeline, data = fitted(image_config(cache_features=True,
                                         preprocess={"size": 64, "pad_crop": 2}), shapes)
    with pytest.raises(ConfigError, match=r"inputs.image.cache_features.*augments"):
        cache_frozen_features(pipeline, [data])
    pipeline, data = fitted(image_config(
        cache_features=True, encoder={"type": "efficientnet_lite0", "freeze": False}), shapes)
    with pytest.raises(ConfigError, match=r"no frozen pretrained part"):
        cache_frozen_features(pipeline, [data])


def test_training_on_cached_features_then_predicting_live(shapes, tmp_path):
    model = mmfuse.Model.from_config(image_config())
    model.fit(str(shapes), out=tmp_path / "run", threads=1)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(records) == 2 and all(r["epoch_seconds"] > 0 for r in records)
    loaded = mmfuse.Model.load(tmp_path / "run")
    assert loaded.predict(str(shapes)) == model.predict(str(shapes))


def test_a_video_backbone_caches_its_frame_vectors(tmp_path):
    rows = []
    for i in range(6):
        direction = 1 if i % 2 else -1
        path = write_video(tmp_path / f"clip{i}.mp4", moving_square(6, 48, 48, direction))
        rows.append({"clip": path.name, "label": "right" if direction > 0 else "left"})
    table = tmp_path / "clips.csv"
    table.write_text("clip,label\n" + "".join(f"{r['clip']},{r['label']}\n" for r in rows))
    config = {"inputs": [{"name": "clip", "type": "video", "preprocess": {"size": 48,
                                                                         "frames": 4},
                          "encoder": {"type": "frame_cnn", "dim": 16,
                                      "backbone": {"type": "efficientnet_lite0"}}}],
              "outputs": [{"name": "label", "type": "category"}],
              "training": {"epochs": 1, "valid_fraction": 0}}
    resolved = load_config(config)
    assert resolved.inputs[0].preprocess["mean"] is not None  # the backbone's preprocessing
    pipeline, data = fitted(config, table)
    [cached] = cache_frozen_features(pipeline, [data])
    column = cached.inputs["clip"]
    assert isinstance(column, FeatureColumn) and column.names == ("frames", "mask")
    # the mean of the last map, then stages 1 and 3 on a 3x3 grid
    assert column.items[0].shape[1:] == (4, 1280 + 56 * 9)
    assert_cached_logits_match(pipeline, data, cached, "label")


def test_partial_fine_tuning_trains_on_the_cached_map_before_its_blocks(shapes, tmp_path):
    """``train_last_blocks: 1`` caches the map before the last block (192 channels at 2x2 for
    64 px): each epoch runs one block and the head, and the trained model predicts live with
    the same answers."""
    config = image_config(encoder={"type": "efficientnet_lite0", "train_last_blocks": 1})
    pipeline, data = fitted(config, shapes)
    [cached] = cache_frozen_features(pipeline, [data])
    assert cached.inputs["image"].items[0].shape[1:] == (192, 2, 2)
    assert_cached_logits_match(pipeline, data, cached, "answer")
    model = mmfuse.Model.from_config(config)
    model.fit(str(shapes), out=tmp_path / "run", threads=1)
    assert mmfuse.Model.load(tmp_path / "run").predict(str(shapes)) == model.predict(str(shapes))
