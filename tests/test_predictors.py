"""Classic predictors on fused vectors: config checks, fitting after training, storage without
pickle, evaluation beside the heads they replace, prediction and ONNX export."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

import mmfuse
from mmfuse.config import load_config
from mmfuse.errors import BundleError, ConfigError

pytest.importorskip("sklearn")
pytest.importorskip("skops")


def config_with(output: dict) -> dict:
    return {"inputs": [{"name": "x", "type": "number"}], "outputs": [output]}


@pytest.mark.parametrize("output, message", [
    ({"name": "y", "type": "binary", "predictor": {"type": "linear"}},
     "predictor 'linear' does not predict binary outputs .*use one of: logistic, "
     "random_forest, gradient_boosting"),
    ({"name": "y", "type": "set", "predictor": "random_forest"},
     "set outputs take no predictor"),
    ({"name": "y", "type": "number", "predictor": {"type": "random_forest",
                                                    "n_estimator": 5}},
     "unknown option 'n_estimator' \\(did you mean 'n_estimators'\\?\\)"),
    ({"name": "y", "type": "number", "predictor": {"type": "random_forest",
                                                    "n_estimators": -1}},
     "n_estimators"),
    ({"name": "y", "type": "number", "predictor": {"type": "lineer"}},
     "unknown type 'lineer' \\(did you mean 'linear'\\?\\)"),
    ({"name": "y", "type": "number", "use": "head"}, "has no predictor, so drop use"),
])
def test_predictor_config_errors(output, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_with(output))


def test_predictor_options_reach_the_estimator():
    config = load_config(config_with({"name": "y", "type": "category",
                                      "predictor": {"type": "logistic", "C": 0.5}}))
    assert config.outputs[0].predictor == {"type": "logistic", "C": 0.5}


def test_the_bundle_stores_predictors_as_skops_covered_by_the_manifest(every_type_run):
    bundle = every_type_run["run"] / "model"
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ("price", "heavy", "shape"):
        entry = manifest["files"][f"predictors/{name}.skops"]
        assert entry["bytes"] == (bundle / f"predictors/{name}.skops").stat().st_size
    assert "predictors/tags.skops" not in manifest["files"]
    # a skops file is a zip of JSON and arrays, not a pickle stream
    assert (bundle / "predictors/price.skops").read_bytes()[:2] == b"PK"


def test_an_altered_predictor_is_refused(every_type_run, tmp_path):
    bundle = tmp_path / "model"
    shutil.copytree(every_type_run["run"] / "model", bundle)
    path = bundle / "predictors/shape.skops"
    path.write_bytes(path.read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(BundleError, match="does not match the sha256"):
        mmfuse.Model.load(bundle)


def test_a_predictor_holding_an_untrusted_type_is_refused():
    import skops.io
    from sklearn.svm import SVR

    from mmfuse.predictors import Predictor

    data = skops.io.dumps(SVR().fit(np.random.randn(10, 2), np.random.randn(10)))
    with pytest.raises(BundleError, match="types mmfuse does not trust.*SVR"):
        Predictor.loads(data, "number", 0, "predictors/y.skops")


def test_evaluate_reports_predictors_and_the_heads_they_replace(every_type_run):
    model = mmfuse.Model.load(every_type_run["run"])
    result = model.evaluate(every_type_run["jsonl"], by="shape")
    assert set(result["heads"]) == {"price", "shape"}  # served by predictors
    assert set(result["predictors"]) == {"heavy"}  # use: head: fitted, reported, not served
    assert result["outputs"]["price"] != result["heads"]["price"]
    for group in result["groups"].values():
        assert set(group["heads"]) == {"price", "shape"} and set(group["predictors"]) == {"heavy"}
    assert set(result["outputs"]["heavy"]) >= {"roc_auc", "pr_auc", "f1", "baseline"}
    assert set(result["predictors"]["heavy"]) == set(result["outputs"]["heavy"])


def test_predict_uses_the_predictor_unless_use_head(every_type_run):
    from mmfuse.model import FUSED

    model = mmfuse.Model.load(every_type_run["run"])
    pipeline = model.pipeline
    encoded = pipeline.encode(mmfuse.api.as_table(str(every_type_run["csv"])), targets=False)
    raw = pipeline.logits(encoded, fused=True, predictors=False)
    served = pipeline.logits(encoded)
    fused = raw[FUSED].numpy()
    torch.testing.assert_close(served["price"], pipeline.predictors["price"].outputs(fused))
    torch.testing.assert_close(served["shape"], pipeline.predictors["shape"].outputs(fused))
    torch.testing.assert_close(served["heavy"], raw["heavy"])  # use: head
    rows = model.predict(str(every_type_run["csv"]))
    values = pipeline.model.heads["price"].values(served["price"])
    assert [r["price"]["prediction"] for r in rows] == pytest.approx(values.tolist(), abs=1e-5)


def test_the_summary_times_the_predictors(every_type_run, tmp_path):
    from every_type import EVERY_TYPE_CONFIG

    config = copy.deepcopy(EVERY_TYPE_CONFIG)
    config["training"]["epochs"] = 1
    summary = mmfuse.Model.from_config(config).fit(every_type_run["csv"])
    assert set(summary["predictor_seconds"]) == {"fused_vectors", "price", "heavy", "shape"}
    # heavy's threshold is fitted; shape's temperature is not: a predictor serves shape, and
    # a temperature scales only the head's logits
    assert set(summary["calibration"]) == {"split", "heavy"}
    assert summary["calibration"]["split"] == "valid"


def test_threshold_auto_is_fitted_on_the_answers_served(every_type_run):
    """A binary output served by its predictor gets the F1-best threshold of the predictor's
    probabilities, not of the head's it replaces."""
    from mmfuse.data.table import read_table
    from mmfuse.outputs.binary import best_f1_threshold

    config = {"inputs": [{"name": "weight", "type": "number"}, {"name": "brand",
                                                                "type": "category"}],
              "outputs": [{"name": "heavy", "type": "binary", "threshold": "auto",
                           "predictor": {"type": "logistic"}}],
              "training": {"epochs": 3, "batch_size": 8, "valid_fraction": 0.0}}
    model = mmfuse.Model.from_config(config)
    model.fit(every_type_run["csv"])
    pipeline = model.pipeline
    encoded = pipeline.encode(read_table(every_type_run["csv"]))
    served = pipeline.logits(encoded)["heavy"]
    target = encoded.targets["heavy"]
    known = ~np.isnan(target)
    expected = best_f1_threshold(torch.sigmoid(served.double()).numpy()[known], target[known])
    assert pipeline.model.heads["heavy"].threshold == pytest.approx(expected)


def test_the_onnx_export_converts_served_predictors(every_type_run, tmp_path):
    """Every input type and every output type but text (whose search loops are not exported)
    in one graph, with the served predictors converted beside it."""
    pytest.importorskip("skl2onnx")
    from every_type import EVERY_TYPE_CONFIG
    from mmfuse.export import export_onnx, load_exported

    config = copy.deepcopy(EVERY_TYPE_CONFIG)
    config["outputs"] = [o for o in config["outputs"] if o["type"] != "text"]
    run = tmp_path / "run"
    mmfuse.Model.from_config(config).fit(every_type_run["csv"], out=run)
    result = export_onnx(run, tmp_path / "onnx")
    converted = {p["output"]: p for p in result["predictors"]}
    assert set(converted) == {"price", "shape"}
    assert all(p["max_abs_diff"] <= 1e-4 for p in converted.values())
    shapes = {o["name"]: o["shape"] for o in result["outputs"]}
    assert shapes["price"] == ["batch"] and shapes["heavy"] == ["batch"]
    assert shapes["tags"] == ["batch", 3] and shapes["shape"] == ["batch", 3]

    torch_rows = mmfuse.Model.load(run).predict(str(every_type_run["csv"]))
    onnx_rows = load_exported(tmp_path / "onnx").predict(str(every_type_run["csv"]))
    same = 0
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        same += all(
            a[n]["prediction"] == pytest.approx(b[n]["prediction"], rel=1e-4, abs=1e-4)
            if n == "price" else a[n]["prediction"] == b[n]["prediction"] for n in a)
    assert same / len(torch_rows) >= 0.995
