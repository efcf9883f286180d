"""A new input type is one module: a modality registered from this test file alone (a cell of
space-separated numbers, as a fixed-width vector), with its own encoder, trains, predicts, is
served with its OpenAPI field and exports to ONNX, without a line of mmfuse changed."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn

import mmfuse
from mmfuse.config_base import Options, StrictModel
from mmfuse.encoders import Encoder
from mmfuse.features import Features, all_present
from mmfuse.modalities.kind import BadValue, modality
from mmfuse.modalities.tabular import TabularModality, TabularPreprocessor
from mmfuse.registry import ENCODERS, MODALITIES
from mmfuse.specs import EncoderSpec, EncoderTraits


class VectorOptions(StrictModel):
    width: int = Field(3, ge=1)


class VectorPreprocessor(TabularPreprocessor):
    what = "space-separated numbers"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.options = VectorOptions.model_validate(config.preprocess)

    def parse(self, value: Any) -> tuple[float, ...]:
        parts = str(value).split() if not isinstance(value, list) else value
        if len(parts) != self.options.width:
            raise ValueError(f"{len(parts)} numbers, not {self.options.width}")
        return tuple(float(p) for p in parts)

    def items(self, unique: list[Any]) -> np.ndarray:
        return np.asarray(unique, dtype=np.float32).reshape(-1, self.options.width)

    def tensors(self, items: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        return {"vector": torch.from_numpy(np.asarray(items, dtype=np.float32))}

    def spec(self) -> EncoderSpec:
        return EncoderSpec("vector", width=self.options.width)


class VectorModality(TabularModality):
    """vector: space-separated numbers of a fixed width."""

    name = "vector"
    preprocessor = VectorPreprocessor
    default_encoder = "vector_mlp"
    value = "text"  # a request sends the numbers as one string
    variable_axes = {"vector": {}}

    def request_value(self, value: Any, prep: VectorPreprocessor, limits: Any) -> Any:
        if isinstance(value, str) and len(value) > limits.max_text_chars:
            raise BadValue("too long", 413)
        return super().request_value(value, prep, limits)

    def example_items(self, prep: VectorPreprocessor, sizes: list[int], rng) -> np.ndarray:
        return rng.standard_normal((len(sizes), prep.options.width)).astype(np.float32)

    def schema(self, prep: Any, limits: Any, json_body: bool) -> dict:
        return {"type": "string", "pattern": r"^\s*\S+(\s+\S+)*\s*$"}


class VectorMLPOptions(Options):
    dim: int = 8


class VectorMLP(Encoder):
    """A vector through Linear + ReLU."""

    traits = EncoderTraits(modalities=("vector",))

    def __init__(self, options: VectorMLPOptions, spec: EncoderSpec) -> None:
        super().__init__(spec)
        self.net = nn.Sequential(nn.Linear(spec.width, options.dim), nn.ReLU())
        self.token_features = nn.Identity()
        self.token_dim = self.pooled_dim = options.dim

    def forward(self, vector: torch.Tensor) -> Features:
        tokens = self.token_features(self.net(vector).unsqueeze(1))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(tokens, mask, tokens[:, 0], all_present(tokens.shape[0], tokens.device))


@pytest.fixture
def vector_type():
    """The modality and its encoder registered for one test, then removed again."""
    from conftest import registered

    with registered((MODALITIES, "vector", VectorOptions, VectorModality),
                    (ENCODERS, "vector_mlp", VectorMLPOptions, VectorMLP), clear=modality):
        yield


CONFIG = {"inputs": [{"name": "v", "type": "vector"}, {"name": "w", "type": "number"}],
          "outputs": [{"name": "y", "type": "binary"}], "training": {"epochs": 3,
                                                                     "batch_size": 16}}


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        v = rng.standard_normal(3)
        out.append({"v": " ".join(f"{x:.3f}" for x in v), "w": float(rng.standard_normal()),
                    "y": "yes" if v[0] + v[1] > 0 else "no"})
    return out


def test_a_modality_registered_outside_mmfuse_works_end_to_end(vector_type, tmp_path):
    from conftest import write_table

    table = write_table(tmp_path / "t.csv", rows(200))
    model = mmfuse.Model.from_config(copy.deepcopy(CONFIG))
    assert model.config.inputs[0].encoder["type"] == "vector_mlp"  # its default encoder
    model.fit(table, out=tmp_path / "run")
    assert model.evaluate(table)["outputs"]["y"]["accuracy"] > 0.8
    assert model.predict([{"v": "1 1 0", "w": 0.0}])[0]["y"]["prediction"] == "yes"
    with pytest.raises(mmfuse.errors.DataError, match="row 2: '1 2': 2 numbers, not 3"):
        model.evaluate([{"v": "1 1 1", "w": 1, "y": "yes"}, {"v": "1 2", "w": 1, "y": "no"}])

    from mmfuse.serve import load_service

    service = load_service(tmp_path / "run")
    assert service.describe()["inputs"][0] == {"name": "v", "type": "vector",
                                               "encoder": "vector_mlp", "value": "text",
                                               "required": True}
    form = service.openapi()["paths"]["/v1/predict"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]
    assert "pattern" in form["v"]
    prepared = service.prepare([{"v": "0.5 0.5 0", "w": "1"}])
    assert service.run([prepared])[0][0]["y"]["prediction"] == "yes"

    pytest.importorskip("onnxruntime")
    from mmfuse.export import export_onnx, load_exported

    result = export_onnx(tmp_path / "run", tmp_path / "onnx")
    assert [i["name"] for i in result["inputs"]][:2] == ["v.vector", "v.index"]
    exported = load_exported(tmp_path / "onnx").predict(str(table))
    assert [r["y"]["prediction"] for r in exported] == [
        r["y"]["prediction"] for r in model.predict(str(table))]
