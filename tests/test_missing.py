"""Missing inputs: learned placeholders, modality dropout, ``evaluate --drop``, absent fields."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import mmfuse
from mmfuse.data.table import read_table
from mmfuse.errors import DataError
from mmfuse.features import Features, expand_rows
from mmfuse.modalities import MISSING
from mmfuse.model import MultimodalModel
from mmfuse.pipeline import Pipeline
from mmfuse.specs import EncoderSpec, InputDims, TargetSpec


def features(rows: int, tokens: int = 3, dim: int = 4, seed: int = 0) -> Features:
    generator = torch.Generator().manual_seed(seed)
    return Features(torch.randn(rows, tokens, dim, generator=generator),
                    torch.ones(rows, tokens, dtype=torch.bool),
                    torch.randn(rows, 5, generator=generator),
                    torch.ones(rows, dtype=torch.bool))


def test_missing_rows_are_zero_and_marked_absent():
    items = features(2)
    out = expand_rows(items, torch.tensor([1, MISSING, 0, MISSING]), 4, 5)
    assert out.present.tolist() == [True, False, True, False]
    torch.testing.assert_close(out.tokens[0], items.tokens[1])
    torch.testing.assert_close(out.pooled[2], items.pooled[0])
    assert (out.tokens[1] == 0).all() and (out.pooled[3] == 0).all()
    assert out.mask[1].tolist() == [True, False, False], "one token, for pooling fusions"


def test_a_batch_where_every_row_misses_the_input():
    out = expand_rows(None, torch.tensor([MISSING, MISSING, MISSING]), 4, 5)
    assert out.tokens.shape == (3, 1, 4) and out.pooled.shape == (3, 5)
    assert not out.present.any() and out.mask.all()


def test_a_missing_row_does_not_depend_on_other_rows_items(minimal_config):
    """Through the model: whatever items the batch holds, a row without the image gets the
    same output (it only sees its question)."""
    config = mmfuse.load_config(minimal_config)
    model = MultimodalModel(
        config, {"image": EncoderSpec("image", channels=3, size=(32, 32)),
                 "question": EncoderSpec("text", vocab_size=20, pad_id=0)},
        {"answer": TargetSpec(labels=["a", "b", "c"])}).eval()
    question = {"ids": torch.tensor([[3, 4, 5]]), "mask": torch.ones(1, 3, dtype=torch.bool),
                "index": torch.tensor([0, 0])}
    outputs = []
    for seed in (0, 1):
        pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        image = {"pixels": pixels, "index": torch.tensor([0, MISSING])}
        with torch.no_grad():
            outputs.append(model({"image": image, "question": question})["answer"])
    assert not torch.allclose(outputs[0][0], outputs[1][0]), "row 0 sees its image"
    torch.testing.assert_close(outputs[0][1], outputs[1][1])


def test_modality_dropout_rate_and_never_drops_a_whole_row(minimal_config):
    minimal_config["inputs"][0]["modality_dropout"] = 0.5
    minimal_config["inputs"][1]["modality_dropout"] = 0.5
    pipeline = Pipeline.from_config(mmfuse.load_config(minimal_config))
    items = {"image": np.arange(10_000), "question": np.arange(10_000)}
    items["question"][:100] = MISSING  # already missing in the table
    dropped = pipeline._drop_inputs(items, torch.Generator().manual_seed(0))
    image_gone = dropped["image"] == MISSING
    question_gone = dropped["question"] == MISSING
    assert not (image_gone & question_gone).any(), "every row keeps at least one input"
    assert not image_gone[:100].any(), "a row whose question is missing keeps its image"
    # each input is hidden from about half the rows, minus the rows that would lose both
    assert 0.3 < image_gone.mean() < 0.4 and 0.3 < question_gone.mean() < 0.4
    again = pipeline._drop_inputs(items, torch.Generator().manual_seed(0))
    assert all(np.array_equal(dropped[n], again[n]) for n in items), "seeded"


def test_no_dropout_at_evaluation(shapes_qa, minimal_config):
    minimal_config["inputs"][0]["modality_dropout"] = 0.9
    pipeline = Pipeline.from_config(mmfuse.load_config(minimal_config))
    data = pipeline.fit(read_table(shapes_qa["en_test"]))
    inputs, _ = pipeline.batch(data, np.arange(len(data)), train=False)
    assert (inputs["image"]["index"] != MISSING).all()


@pytest.fixture(scope="module")
def trained(shapes_qa, tmp_path_factory):
    from conftest import MINIMAL

    config = json.loads(json.dumps(MINIMAL))
    config["training"].update(epochs=3)
    model = mmfuse.Model.from_config(config)
    model.fit(shapes_qa["en_train"], out=tmp_path_factory.mktemp("missing") / "run")
    return model


def test_evaluate_drop_removes_the_input_from_every_row(trained, shapes_qa):
    full = trained.evaluate(shapes_qa["en_test"], by="qtype")
    blind = trained.evaluate(shapes_qa["en_test"], by="qtype", drop=["image"])
    assert blind["dropped"] == ["image"]
    assert blind["outputs"]["answer"]["accuracy"] < full["outputs"]["answer"]["accuracy"]
    # without the image every row with the same question gets the same answer
    with pytest.raises(DataError, match="'picture'.*its inputs are: image, question"):
        trained.evaluate(shapes_qa["en_test"], drop=["picture"])


def test_predict_with_absent_fields_and_empty_cells(trained, shapes_qa, tmp_path):
    with shapes_qa["en_test"].open() as f:
        first = next(csv.DictReader(f))
    image = str(shapes_qa["en_test"].parent / first["image"])
    rows = [{"image": image, "question": first["question"]},
            {"image": image},  # absent field
            {"image": image, "question": ""},  # empty cell
            {"question": first["question"]}]
    out = trained.predict(rows)
    assert len(out) == 4
    assert out[1]["answer"] == out[2]["answer"], "absent and empty are the same: missing"
    only_question = trained.predict([{"question": first["question"]}])  # no image column at all
    assert only_question[0]["answer"]["prediction"]


def test_training_table_with_empty_cells(shapes_qa, minimal_config, tmp_path):
    rows = list(csv.DictReader(shapes_qa["en_train"].open()))
    for i, row in enumerate(rows):
        row["image"] = str(shapes_qa["en_train"].parent / row["image"])
        if i % 7 == 0:
            row["question"] = ""
        elif i % 7 == 1:
            row["image"] = ""
    minimal_config["training"].update(epochs=2)
    model = mmfuse.Model.from_config(minimal_config)
    summary = model.fit(rows)
    assert np.isfinite(summary["best"]["valid_loss"])


def test_film_target_missing_in_some_rows(shapes_qa, minimal_config):
    minimal_config["fusion"] = {"type": "film"}
    minimal_config["training"].update(epochs=1, batch_size=16)
    rows = list(csv.DictReader(shapes_qa["en_train"].open()))[:64]
    for i, row in enumerate(rows):
        row["image"] = "" if i % 3 == 0 else str(shapes_qa["en_train"].parent / row["image"])
        if i % 5 == 0:
            row["question"] = ""
    model = mmfuse.Model.from_config(minimal_config)
    model.fit(rows)
    assert len(model.predict(rows[:6])) == 6


def film_fusion():
    from mmfuse.registry import FUSIONS

    entry = FUSIONS.get("film")
    dims = {"image": InputDims(token_dim=6, pooled_dim=5, modality="image",
                               film_channels=(3, 4)),
            "question": InputDims(token_dim=5, pooled_dim=5, modality="text", query=True)}
    fusion = entry.builder(entry.options.model_validate({}), dims)
    torch.nn.init.normal_(fusion.generator.weight)
    torch.nn.init.normal_(fusion.generator.bias)
    return fusion


def test_film_gives_a_missing_query_the_mean_querys_modulation():
    fusion = film_fusion()
    query = features(4, dim=5)
    query.present = torch.tensor([True, True, False, True])
    fusion.train()
    fusion.modulation(query)  # the first batch sets the running mean
    torch.testing.assert_close(fusion.query_mean, query.pooled[query.present].mean(0))
    fusion.eval()
    expected = fusion.generator(fusion.query_mean)  # the mean modulation (linear generator)
    out = fusion.modulation(query)
    torch.testing.assert_close(out[0][0][2], expected[:3])  # the missing row's gamma, block 0
    torch.testing.assert_close(out[1][1][2], expected[3 + 3 + 4:])  # its beta, block 1
    assert not torch.allclose(out[0][0][0], expected[:3])  # a present row keeps its own
    fused = fusion({"image": features(4, seed=1), "question": query})
    mean_query = Features(query.tokens, query.mask, fusion.query_mean.expand(4, -1),
                          torch.ones(4, dtype=torch.bool))
    alone = fusion({"image": features(4, seed=1), "question": mean_query})
    torch.testing.assert_close(fused[2], alone[2])


def test_film_bundle_without_the_running_mean_keeps_the_identity_modulation():
    fusion = film_fusion()
    old = {k: v for k, v in fusion.state_dict().items() if not k.startswith("query_")}
    fusion.query_mean.fill_(3.0)
    fusion.load_state_dict(old)  # an older bundle: no query_mean, no query_tracked
    query = features(2, dim=5)
    query.present = torch.tensor([True, False])
    fusion.eval()
    gamma, beta = fusion.modulation(query)[0]
    assert float((gamma[1].abs().sum() + beta[1].abs().sum()).detach()) == 0.0


def test_placeholder_mode_fills_missing_rows_with_learned_vectors():
    from mmfuse.features import Placeholder

    placeholder = Placeholder(4, 5)
    out = placeholder(expand_rows(features(2), torch.tensor([1, MISSING, 0]), 4, 5))
    assert out.present.all(), "a placeholder row is fused like data"
    torch.testing.assert_close(out.pooled[1], placeholder.pooled.detach())
    torch.testing.assert_close(out.tokens[1, 0], placeholder.token.detach())
    assert out.mask[1].tolist() == [True, False, False]
    torch.testing.assert_close(out.pooled[0], features(2).pooled[1])


def test_placeholders_are_learned_and_saved(shapes_qa, minimal_config, tmp_path):
    minimal_config["inputs"][1].update(modality_dropout=0.5, missing="placeholder")
    minimal_config["training"].update(epochs=1, valid_fraction=0)
    config = mmfuse.load_config(minimal_config)
    torch.manual_seed(config.training.seed)  # what fit() does before building the model
    untrained = Pipeline.from_config(config)
    untrained.fit(read_table(shapes_qa["en_train"]))
    initial = untrained.model.placeholders["question"].pooled.detach().clone()

    model = mmfuse.Model.from_config(minimal_config)
    model.fit(shapes_qa["en_train"], out=tmp_path / "run")
    trained = model.pipeline.model.placeholders["question"].pooled.detach()
    assert list(model.pipeline.model.placeholders) == ["question"]
    assert not torch.allclose(trained, initial), "the dropped rows trained the placeholder"
    loaded = mmfuse.Model.load(tmp_path / "run")
    torch.testing.assert_close(loaded.pipeline.model.placeholders["question"].pooled, trained)
