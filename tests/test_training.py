"""The training loop and the Python API on a small non-built-in image-question table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mmfuse
from conftest import TRAIN_IMAGES
from mmfuse.encoders.cnn import CNNEncoder


def small(config: dict, **training) -> dict:
    config["training"].update({"epochs": 2, **training})
    return config


def test_same_seed_gives_same_metrics(shapes_qa, minimal_config, tmp_path):
    runs = []
    for name in ("a", "b"):
        model = mmfuse.Model.from_config(small(minimal_config))
        model.fit(shapes_qa["en_train"], out=tmp_path / name, threads=1)
        runs.append((tmp_path / name / "metrics.jsonl").read_text().splitlines())
    strip = [[{k: v for k, v in json.loads(line).items()
               if k not in ("seconds", "epoch_seconds", "examples_per_second")}
              for line in r] for r in runs]
    assert strip[0] == strip[1] and len(strip[0]) == 2


def test_fit_evaluate_predict_save_load_round_trip(shapes_qa, minimal_config, tmp_path):
    model = mmfuse.Model.from_config(minimal_config)
    summary = model.fit(shapes_qa["en_train"], threads=1)
    assert summary["best_epoch"] >= 1
    assert summary["train_rows"] + summary["valid_rows"] == 2 * TRAIN_IMAGES
    result = model.evaluate(shapes_qa["en_test"], by="qtype")
    answer = result["outputs"]["answer"]
    assert answer["accuracy"] > answer["majority_baseline"] + 0.2
    rows = [{"image": str(shapes_qa["en_test"].parent / "img" / f"test_{i:04d}.png"),
             "question": "What colour is the shape?"} for i in range(5)]
    before = model.predict(rows)
    model.save(tmp_path / "bundle")
    loaded = mmfuse.Model.load(tmp_path / "bundle")
    assert loaded.predict(rows) == before
    assert loaded.evaluate(shapes_qa["en_test"]) == model.evaluate(shapes_qa["en_test"])


def test_jsonl_and_parquet_tables_train_like_csv(shapes_qa, minimal_config, tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    source = shapes_qa["en_train"]
    rows = list(csv.DictReader(source.open(encoding="utf-8")))
    jsonl = source.parent / "copy.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    parquet = source.parent / "copy.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    results = []
    for table in (source, jsonl, parquet):
        model = mmfuse.Model.from_config(small(minimal_config, epochs=1))
        results.append(model.fit(table, threads=1)["best"]["valid_loss"])
    assert results[0] == pytest.approx(results[1]) == pytest.approx(results[2])


def test_ctrl_c_keeps_the_best_model_so_far(shapes_qa, minimal_config, tmp_path, monkeypatch):
    from mmfuse.training import loop

    real = loop.validation_metrics
    calls = {"n": 0}

    def interrupt_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "validation_metrics", interrupt_on_third)
    model = mmfuse.Model.from_config(small(minimal_config, epochs=5))
    summary = model.fit(shapes_qa["en_train"], out=tmp_path / "run", threads=1)
    assert summary["interrupted"] and summary["best_epoch"] in (1, 2)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    reloaded = mmfuse.Model.load(tmp_path / "run")
    assert reloaded.evaluate(shapes_qa["en_test"]) == model.evaluate(shapes_qa["en_test"])


def test_early_stopping_stops_after_patience(shapes_qa, minimal_config, monkeypatch):
    from mmfuse.training import loop

    losses = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
    monkeypatch.setattr(loop, "validation_metrics",
                        lambda *a, **k: {"loss": next(losses), "accuracy": 0.5})
    model = mmfuse.Model.from_config(
        small(minimal_config, epochs=8, early_stopping_patience=2))
    summary = model.fit(shapes_qa["en_train"], threads=1)
    assert summary["epochs"] == 4 and summary["best_epoch"] == 2 and summary["stopped_early"]


def test_rows_sharing_an_image_are_encoded_once_per_batch(shapes_qa, minimal_config,
                                                         monkeypatch):
    encoded = []
    real_forward = CNNEncoder.forward

    def counting_forward(self, pixels):
        encoded.append(len(pixels))
        return real_forward(self, pixels)

    monkeypatch.setattr(CNNEncoder, "forward", counting_forward)
    config = small(minimal_config, epochs=1, valid_fraction=0.0)
    model = mmfuse.Model.from_config(config)
    model.fit(shapes_qa["en_train"], threads=1)
    # 2 questions per image, grouped batches of 32 rows: each image is encoded once, except an
    # image whose two rows straddle a batch boundary (at most one per batch).
    batches = int(np.ceil(2 * TRAIN_IMAGES / 32))
    assert TRAIN_IMAGES <= sum(encoded) <= TRAIN_IMAGES + batches
    assert len(encoded) == batches


def test_grouping_can_be_switched_off(shapes_qa, minimal_config, monkeypatch):
    encoded = []
    real_forward = CNNEncoder.forward
    monkeypatch.setattr(CNNEncoder, "forward",
                        lambda self, pixels: encoded.append(len(pixels)) or
                        real_forward(self, pixels))
    config = small(minimal_config, epochs=1, valid_fraction=0.0, group_rows_by_file=False)
    mmfuse.Model.from_config(config).fit(shapes_qa["en_train"], threads=1)
    assert sum(encoded) > 1.5 * TRAIN_IMAGES  # shuffled rows rarely meet their twin in a batch


def test_predict_before_fit_is_a_clear_error(minimal_config):
    with pytest.raises(mmfuse.MmfuseError, match="not trained"):
        mmfuse.Model.from_config(minimal_config).predict([{"image": "x", "question": "y"}])


def test_pretrained_minilm_question_encoder_trains_end_to_end(shapes_qa, minimal_config,
                                                             tmp_path):
    minimal_config["inputs"][1]["encoder"] = {"type": "minilm"}
    model = mmfuse.Model.from_config(small(minimal_config, epochs=6))
    model.fit(shapes_qa["zh_train"], out=tmp_path / "run", threads=1)
    assert model.pipeline.inputs["question"].kind == "pretrained"
    result = model.evaluate(shapes_qa["zh_test"], by="qtype")
    for group in result["groups"].values():
        answer = group["outputs"]["answer"]
        assert answer["accuracy"] > answer["majority_baseline"] + 0.2
    reloaded = mmfuse.Model.load(tmp_path / "run")
    assert reloaded.evaluate(shapes_qa["zh_test"]) == model.evaluate(shapes_qa["zh_test"])


def test_max_minutes_stops_within_an_epoch(shapes_qa, minimal_config, monkeypatch):
    from mmfuse.training import loop

    clock = {"t": 0.0}

    def fake_clock():
        clock["t"] += 1.0  # every reading advances one second
        return clock["t"]

    monkeypatch.setattr(loop.time, "perf_counter", fake_clock)
    model = mmfuse.Model.from_config(small(minimal_config, epochs=5, max_minutes=0.2))
    summary = model.fit(shapes_qa["en_train"], threads=1)
    # 12 s of budget at one second per reading: stops during the first epoch, keeps its weights
    assert summary["epochs"] == 1 and summary["best_epoch"] == 1


@pytest.mark.parametrize(("rows", "batch", "epochs", "patience"), [
    (300, 64, 200, 20),        # 5 steps an epoch: 400 would be needed, capped at 200
    (3000, 64, 43, 5),         # 47 steps an epoch: 2,000 steps
    (196_000, 64, 10, 5),      # a large table keeps the old 10 epochs
])
def test_auto_epochs_give_a_small_table_enough_steps(rows, batch, epochs, patience):
    from mmfuse.config import TrainingConfig
    from mmfuse.training.loop import resolve_epochs

    cfg = TrainingConfig(batch_size=batch)
    assert resolve_epochs(cfg, -(-rows // batch)) == (epochs, patience)
    fixed = TrainingConfig(epochs=7, early_stopping_patience=None)
    assert resolve_epochs(fixed, 5) == (7, None)


def test_early_stopping_counts_accuracy_gains_and_ignores_tiny_loss_gains():
    from mmfuse.training.loop import improved

    best = {"loss": 0.5, "accuracy": 0.8}
    assert improved(0.6, 0.81, best)          # loss worse, accuracy better: still learning
    assert improved(0.49, 0.8, best)          # loss 2% lower
    assert not improved(0.498, 0.8, best)     # 0.4% lower: noise
    assert not improved(0.0009, 1.0, {"loss": 0.001, "accuracy": 1.0})  # learned; stop



def test_pretrained_lr_multiplier_scales_only_the_pretrained_weights_that_train():
    from mmfuse.config import TrainingConfig
    from mmfuse.registry import ENCODERS
    from mmfuse.specs import EncoderSpec
    from mmfuse.training.loop import make_optimizer

    encoder = ENCODERS.build({"type": "efficientnet_lite0", "train_last_blocks": 1,
                                         "dim": 8}, EncoderSpec("image", channels=3, size=(64, 64)))
    model = torch.nn.Sequential(encoder, torch.nn.Linear(8, 2))
    optimizer = make_optimizer(model, TrainingConfig(learning_rate=0.01,
                                                     pretrained_lr_multiplier=0.1))
    new, pretrained = optimizer.param_groups
    assert new["lr"] == 0.01 and pretrained["lr"] == pytest.approx(0.001)
    trainable_pretrained = {id(p) for p in encoder.pretrained_parameters() if p.requires_grad}
    assert {id(p) for p in pretrained["params"]} == trainable_pretrained
    assert trainable_pretrained and len(new["params"]) == 4  # the projection and the Linear
    frozen = make_optimizer(torch.nn.Sequential(ENCODERS.build({"type": "efficientnet_lite0"},
        EncoderSpec("image", channels=3, size=(32, 32))),

        torch.nn.Linear(1280, 2)), TrainingConfig(pretrained_lr_multiplier=0.1))
    assert len(frozen.param_groups) == 1  # nothing pretrained trains: one group


@pytest.mark.parametrize(("rows", "epochs", "patience"),
                         [(43, 20, 10), (130, 17, 4), (432, 6, 2), (20_000, 3, 2)])
def test_auto_epochs_of_a_pretrained_lm_aim_at_150_steps(rows, epochs, patience):
    from mmfuse.config import TrainingConfig
    from mmfuse.training.loop import resolve_epochs

    cfg = TrainingConfig(batch_size=16)
    # patience: 2 epochs, or 30 steps where an epoch is short
    assert resolve_epochs(cfg, -(-rows // 16), pretrained=True) == (epochs, patience)
