"""A new output type is one module: ``count`` (a non-negative whole number, Poisson regression)
registered from this test file alone, with its target preprocessor, head, metrics and answer
schema, trains, evaluates, predicts, is served with its OpenAPI answer and exports to ONNX,
without a line of mmfuse changed."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import mmfuse
from mmfuse.config_base import Options
from mmfuse.data.table import Table
from mmfuse.heads.base import Head
from mmfuse.modalities.tabular import TabularPreprocessor
from mmfuse.outputs.kind import NoOptions, OutputType, output_type
from mmfuse.registry import HEADS, OUTPUTS
from mmfuse.specs import TargetSpec


class CountPreprocessor(TabularPreprocessor):
    what = "a whole number of at least 0"

    def parse(self, value: Any) -> float:
        number = float(value)
        if number < 0 or not number.is_integer():
            raise ValueError("not a whole number of at least 0")
        return number

    def targets(self, table: Table) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in self.parsed(table)],
                        dtype=np.float32)


class CountOptions(Options):
    hidden: int = Field(16, ge=1)


class CountHead(Head):
    """log(rate) = MLP(fused); Poisson negative log-likelihood."""

    def __init__(self, options: CountOptions, in_dim: int, spec: TargetSpec) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, options.hidden), nn.ReLU(),
                                 nn.Linear(options.hidden, 1))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused).squeeze(-1)

    def loss(self, log_rate: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0):
        known = ~torch.isnan(target)
        return F.poisson_nll_loss(log_rate[known].float(), target[known].float())

    def counts(self, log_rate: torch.Tensor) -> np.ndarray:
        return np.round(log_rate.double().exp().numpy())  # the nearest count to the rate

    def accuracy(self, log_rate: torch.Tensor, target: torch.Tensor) -> float:
        known = ~torch.isnan(target)
        return float((torch.from_numpy(self.counts(log_rate[known].detach())) ==
                      target[known].double()).double().mean())

    def describe(self) -> dict:
        return {}

    def postprocess(self, log_rate: torch.Tensor) -> list[dict]:
        return [{"prediction": int(c)} for c in self.counts(log_rate)]


class CountOutput(OutputType):
    """count: a whole number of at least 0."""

    preprocessor = CountPreprocessor
    main_metric = "exact"
    report_metrics = ("exact", "mae")
    regression = True

    def scorer(self, head, raw, target, column, prep):
        counts = head.counts(raw)

        def score(rows: np.ndarray) -> dict:
            known = rows[~np.isnan(target[rows])]
            return {"exact": float(np.mean(counts[known] == target[known])),
                    "mae": float(np.mean(np.abs(counts[known] - target[known])))}

        return score

    def answer_schema(self, info: dict) -> dict:
        return {"type": "object", "required": ["prediction"],
                "properties": {"prediction": {"type": "integer", "minimum": 0}}}


@pytest.fixture
def count_type():
    """The output type and its head registered for one test, then removed again."""
    from conftest import registered

    with registered((OUTPUTS, "count", NoOptions, CountOutput),
                    (HEADS, "count", CountOptions, CountHead), clear=output_type):
        yield


CONFIG = {"inputs": [{"name": "x", "type": "number"}, {"name": "c", "type": "category"}],
          "outputs": [{"name": "n", "type": "count"}],
          "training": {"epochs": 30, "batch_size": 32, "learning_rate": 0.01}}


def rows(n: int, seed: int = 0) -> list[dict]:
    """n = 2 + x for x in 0..3, or 0 for category 'none'."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x, none = int(rng.integers(0, 4)), bool(rng.random() < 0.3)
        out.append({"x": x, "c": "none" if none else "some", "n": 0 if none else 2 + x})
    return out


def test_an_output_type_registered_outside_mmfuse_works_end_to_end(count_type, tmp_path):
    from conftest import write_table

    table = write_table(tmp_path / "t.csv", rows(300))
    model = mmfuse.Model.from_config(copy.deepcopy(CONFIG))
    assert model.config.outputs[0].head["type"] == "count"  # its head, found by the type's name
    model.fit(table, out=tmp_path / "run")
    assert model.evaluate(table)["outputs"]["n"]["exact"] > 0.8
    answer = model.predict([{"x": 0, "c": "none"}])[0]["n"]
    assert answer == {"prediction": 0}
    with pytest.raises(mmfuse.errors.DataError, match="row 2: -1: not a whole number"):
        model.evaluate([{"x": 1, "c": "some", "n": 3}, {"x": 1, "c": "some", "n": -1}])

    from mmfuse.serve import load_service

    service = load_service(tmp_path / "run")
    answer = service.openapi()["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]["properties"]["outputs"]["properties"]["n"]
    assert answer["properties"]["prediction"]["type"] == "integer"
    prepared = service.prepare([{"x": "0", "c": "none"}])
    assert service.run([prepared])[0][0]["n"]["prediction"] == 0

    pytest.importorskip("onnxruntime")
    from mmfuse.export import export_onnx, load_exported

    export_onnx(tmp_path / "run", tmp_path / "onnx")
    exported = load_exported(tmp_path / "onnx").predict(str(table))
    assert [r["n"]["prediction"] for r in exported] == [
        r["n"]["prediction"] for r in model.predict(str(table))]


def test_list_outputs_names_the_five_types():
    from typer.testing import CliRunner

    from mmfuse.cli import app

    result = CliRunner().invoke(app, ["list", "outputs", "--json"])
    assert result.exit_code == 0, result.output
    import json

    names = [o["name"] for o in json.loads(result.output)["outputs"]]
    assert names == ["binary", "category", "number", "set", "text"]
