"""Tabular inputs: number, category and binary cells, their encoders, and the fusions that
take them (or refuse them, naming the input)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmfuse.config import load_config
from mmfuse.data.table import Table
from mmfuse.errors import ConfigError, DataError
from mmfuse.modalities import MISSING, build_input_preprocessor
from mmfuse.model import MultimodalModel
from mmfuse.registry import FUSIONS
from mmfuse.specs import EncoderSpec, TargetSpec


def table(values: list, column: str = "x") -> Table:
    return Table([{column: v} for v in values], root=__import__("pathlib").Path.cwd(),
                 source="t.csv")


def preprocessor(kind: str, **preprocess):
    config = load_config({"inputs": [{"name": "x", "type": kind, "preprocess": preprocess}],
                          "outputs": [{"name": "y", "type": "category"}]})
    return build_input_preprocessor(config.inputs[0])


def values_of(prep, column) -> np.ndarray:
    """The encoder's view of each row (NaN for missing)."""
    present = column.index != MISSING
    out = np.full(len(column.index), np.nan)
    if present.any():
        items = prep.tensors(column.items, False, torch.Generator())
        key = "values" if "values" in items else "ids"
        flat = items[key].reshape(len(column.items), -1)[:, 0].double().numpy()
        out[present] = flat[column.index[present]]
    return out


@pytest.mark.parametrize("scaling, expected", [
    ("zscore", lambda x: (x - x.mean()) / x.std()),
    ("minmax", lambda x: (x - x.min()) / (x.max() - x.min())),
    ("log1p", lambda x: (np.log1p(x) - np.log1p(x).mean()) / np.log1p(x).std()),
    ("none", lambda x: x),
])
def test_number_scaling_is_fitted_on_the_training_split(scaling, expected):
    train = np.array([1.0, 2.0, 4.0, 9.0])
    prep = preprocessor("number", scaling=scaling)
    column = prep.fit_encode(table(list(train)))
    np.testing.assert_allclose(values_of(prep, column), expected(train), rtol=1e-5)
    # other data is scaled with the training statistics, not its own
    other = prep.encode(table([3.0]))
    np.testing.assert_allclose(values_of(prep, other),
                               expected(np.r_[train, 3.0])[-1:] if scaling == "none" else
                               _scale_like(scaling, train, 3.0), rtol=1e-5)


def _scale_like(scaling: str, train: np.ndarray, value: float) -> list[float]:
    if scaling == "zscore":
        return [(value - train.mean()) / train.std()]
    if scaling == "minmax":
        return [(value - train.min()) / (train.max() - train.min())]
    logs = np.log1p(train)
    return [(math.log1p(value) - logs.mean()) / logs.std()]


def test_number_cells_blank_are_missing_and_text_and_json_numbers_parse():
    prep = preprocessor("number")
    column = prep.fit_encode(table(["1.5", "", None, 2, "  -3e1 ", float("nan")]))
    assert column.index.tolist()[1:3] == [MISSING, MISSING] and column.index[5] == MISSING
    assert sorted(column.items.tolist()) == [-30.0, 1.5, 2.0]


def test_a_non_numeric_cell_is_an_error_naming_row_column_and_value():
    prep = preprocessor("number")
    with pytest.raises(DataError) as err:
        prep.fit_encode(table(["1", "2", "twelve", "4", "inf"], column="x"))
    message = str(err.value)
    assert "column 'x'" in message and "row 3: 'twelve'" in message
    assert "row 5: 'inf'" in message and "t.csv" in message


def test_log1p_refuses_values_at_or_below_minus_one():
    with pytest.raises(DataError, match="row 2: '-1'"):
        preprocessor("number", scaling="log1p").fit_encode(table(["3", "-1"]))


def test_category_rare_and_unseen_values_share_the_unknown_bucket():
    prep = preprocessor("category", min_frequency=2)
    prep.fit_encode(table(["acme", "acme", "globex", "globex", "initech", 3, "3"]))
    assert prep.values == ["3", "acme", "globex"]  # 3 and "3" are one value, seen twice
    assert prep.spec() == EncoderSpec("category", vocab_size=4)
    column = prep.encode(table(["acme", "initech", "never seen", None, 3]))
    ids = values_of(prep, column)
    assert ids[0] == prep.values.index("acme") + 1
    assert ids[1] == ids[2] == 0  # rare in training, unseen: the unknown bucket
    assert math.isnan(ids[3]) and ids[4] == 1


def test_category_max_values_and_lowercase():
    prep = preprocessor("category", max_values=1, lowercase=True)
    prep.fit_encode(table(["Acme", "acme", "globex"]))
    assert prep.values == ["acme"]


@pytest.mark.parametrize("cell, expected", [
    ("yes", 1.0), ("No", 0.0), ("TRUE", 1.0), ("f", 0.0), ("1", 1.0), ("0", 0.0), (True, 1.0),
    (False, 0.0), (1, 1.0), (0.0, 0.0), ("on", 1.0), ("off", 0.0)])
def test_binary_spellings(cell, expected):
    prep = preprocessor("binary")
    column = prep.fit_encode(table([cell]))
    assert values_of(prep, column)[0] == expected


def test_a_bad_binary_cell_is_an_error_naming_the_row():
    with pytest.raises(DataError, match=r"row 2: 'maybe'.*true/false, yes/no or 1/0"):
        preprocessor("binary").fit_encode(table(["yes", "maybe", "no"]))


def test_defaults_pick_the_tabular_encoders():
    config = load_config({"inputs": [{"name": "a", "type": "number"},
                                      {"name": "b", "type": "category"},
                                      {"name": "c", "type": "binary"}],
                          "outputs": [{"name": "y", "type": "category"}]})
    assert [i.encoder["type"] for i in config.inputs] == ["numeric", "embedding", "numeric"]
    assert config.fusion["type"] == "concat"


def test_a_text_encoder_on_a_number_input_is_a_config_error():
    with pytest.raises(ConfigError, match="takes text or audio inputs, not number"):
        load_config({"inputs": [{"name": "a", "type": "number", "encoder": "gru"}],
                     "outputs": [{"name": "y", "type": "category"}]})


TABULAR = {"weight": EncoderSpec("number"), "brand": EncoderSpec("category", vocab_size=5),
           "flag": EncoderSpec("binary")}


def tabular_model(fusion: dict, inputs: list[dict] | None = None) -> MultimodalModel:
    config = load_config({
        "inputs": inputs or [{"name": "weight", "type": "number"},
                             {"name": "brand", "type": "category"},
                             {"name": "flag", "type": "binary",
                              "encoder": {"type": "numeric", "embedding": "periodic"}}],
        "fusion": fusion, "outputs": [{"name": "y", "type": "category"}]})
    specs = {i.name: TABULAR[i.name] if i.name in TABULAR else
             EncoderSpec("image", channels=3, size=(16, 16)) for i in config.inputs}
    return MultimodalModel(config, specs, {"y": TargetSpec(labels=["a", "b"])})


def tabular_batch(rows: int = 3) -> dict:
    index = torch.tensor([0, -1, 1][:rows])
    return {"weight": {"values": torch.tensor([[0.5], [-1.0]]), "index": index},
            "brand": {"ids": torch.tensor([0, 3]), "index": index},
            "flag": {"values": torch.tensor([[1.0], [0.0]]), "index": index}}


POOLED = ["concat", "sum", "product", "gated", "late", "bilinear", "tensor", "low_rank_tensor",
          "mlb", "mfb", "mutan", "attention", "transformer", "cross_attention"]


@pytest.mark.parametrize("name", [n for n in POOLED if n in FUSIONS.names()])
def test_every_pooled_vector_fusion_takes_tabular_inputs(name):
    model = tabular_model({"type": name})
    logits = model(tabular_batch())["y"]
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert model.encoders["brand"].embed.weight.grad is not None


IMAGE = {"name": "image", "type": "image", "preprocess": {"size": 16},
         "encoder": {"type": "cnn", "channels": [4, 4], "dim": 8}}


def test_relation_refuses_a_tabular_context_naming_it():
    with pytest.raises(ConfigError, match="context input 'weight' is tabular"):
        tabular_model({"type": "relation", "context": "weight"})


def test_relation_takes_a_tabular_query_and_an_image_context():
    model = tabular_model({"type": "relation", "query": "weight"},
                          [{"name": "weight", "type": "number"}, IMAGE])
    batch = {"weight": {"values": torch.tensor([[0.5]]), "index": torch.tensor([0, 0])},
             "image": {"pixels": torch.randn(1, 3, 16, 16), "index": torch.tensor([0, 0])}}
    assert model(batch)["y"].shape == (2, 2)


def test_film_refuses_a_tabular_target_naming_it():
    with pytest.raises(ConfigError, match="cannot modulate input 'weight'"):
        tabular_model({"type": "film", "target": "weight"},
                      [{"name": "weight", "type": "number"}, IMAGE])


def test_film_takes_a_tabular_query():
    model = tabular_model({"type": "film", "query": "brand"},
                          [{"name": "brand", "type": "category"}, IMAGE])
    model.eval()
    batch = {"brand": {"ids": torch.tensor([1, 2]), "index": torch.tensor([0, 1])},
             "image": {"pixels": torch.randn(1, 3, 16, 16), "index": torch.tensor([0, 0])}}
    assert model(batch)["y"].shape == (2, 2)


def test_periodic_embeddings_differ_from_the_projection():
    from mmfuse.encoders.tabular import NumericEncoder, NumericOptions

    spec = EncoderSpec("number")
    linear = NumericEncoder(NumericOptions(dim=8), spec)
    periodic = NumericEncoder(NumericOptions(dim=8, embedding="periodic", frequencies=4), spec)
    x = torch.linspace(-2, 2, 5).view(-1, 1)
    assert linear(x).pooled.shape == periodic(x).pooled.shape == (5, 8)
    assert periodic.frequencies.shape == (1, 4)
    assert linear(x).tokens.shape == (5, 1, 8)


def test_training_batches_teach_the_unknown_bucket():
    prep = preprocessor("category", unknown_rate=0.25)
    column = prep.fit_encode(table([f"v{i}" for i in range(400)]))
    generator = torch.Generator().manual_seed(0)
    ids = prep.tensors(column.items, True, generator)["ids"]
    assert 0.15 < float((ids == 0).float().mean()) < 0.35  # about a quarter hidden
    assert (prep.tensors(column.items, False, generator)["ids"] > 0).all()  # never in eval
    assert preprocessor("category").options.unknown_rate == 0.05
