"""The prediction stage end to end, as a new user meets it: the built-in products table
(a picture, a description, a brand, numbers and a yes/no flag; price, fragile and tags to
predict) trained from the CLI in CSV and in JSONL with ``examples/products.yaml``, then
``evaluate --json`` and ``predict --json``; and bad cells named by row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from test_cli import run

EXAMPLE = Path(__file__).parent.parent / "examples" / "products.yaml"
EPOCHS = {"csv": 12, "jsonl": 2}  # the example trains 30; 12 beat every baseline clearly here


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("products")
    run("datasets", "products", folder / "data", "--train", "500", "--test", "150")
    config = yaml.safe_load(EXAMPLE.read_text())
    runs = {}
    for fmt in ("csv", "jsonl"):
        config["training"]["epochs"] = EPOCHS[fmt]
        (folder / f"config_{fmt}.yaml").write_text(yaml.safe_dump(config))
        runs[fmt] = folder / f"run_{fmt}"
        run("train", folder / f"config_{fmt}.yaml", "--data", folder / "data" / f"train.{fmt}",
            "--out", runs[fmt], "--threads", "1")
    return {"folder": folder, "data": folder / "data", "runs": runs}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_evaluate_json_reports_every_output_type_beside_its_baseline(products, fmt):
    result = json.loads(run("evaluate", products["runs"][fmt], "--data",
                            products["data"] / f"test.{fmt}", "--json").stdout)
    price, fragile, tags = (result["outputs"][n] for n in ("price", "fragile", "tags"))
    assert set(price) == {"mae", "rmse", "r2", "loss", "baseline"}
    assert set(fragile) == {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc",
                            "loss", "threshold", "baseline"}
    assert set(tags) == {"jaccard", "f1_micro", "f1_macro", "loss", "threshold", "baseline"}
    # the predictor (gradient boosting on fused vectors) serves price; its head is reported
    assert set(result["heads"]) == {"price"} and set(result["heads"]["price"]) == set(price)
    if fmt == "jsonl":  # trained 2 epochs: the formats are what is checked
        return
    # each beats predicting the training mean / the majority label / the commonest label set
    # (450 training rows, 12 epochs; benchmarks/prediction.py measures the full-size table)
    assert price["r2"] > 0.4 and price["mae"] < 0.75 * price["baseline"]["mae"]
    assert result["heads"]["price"]["r2"] > 0.4
    # 0.85: the default cnn since issue 28 (coords, max pooling, a 6-px shift) reached 0.883 here
    assert fragile["roc_auc"] > 0.85 and fragile["f1"] > fragile["baseline"]["f1"] + 0.4
    assert tags["jaccard"] > tags["baseline"]["jaccard"] + 0.15
    assert tags["f1_micro"] > tags["baseline"]["f1_micro"] + 0.2


def test_evaluate_by_a_column_reports_heads_per_group(products):
    result = json.loads(run("evaluate", products["runs"]["csv"], "--data",
                            products["data"] / "test.csv", "--by", "kind", "--json").stdout)
    assert set(result["groups"]) == {"bag", "bottle", "box", "lamp", "mug", "chair"}
    for group in result["groups"].values():
        assert set(group["outputs"]) == {"price", "fragile", "tags"}
        assert set(group["heads"]) == {"price"}
    assert sum(g["n"] for g in result["groups"].values()) == result["n"] == 150


def first_row(data: Path) -> dict:
    with (data / "test.csv").open() as f:
        return next(csv.DictReader(f))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_predict_json_shapes(products, fmt):
    row = first_row(products["data"])
    sets = [f"{name}={row[name] if name != 'image' else products['data'] / row['image']}"
            for name in ("image", "description", "brand", "weight_kg", "rating", "handmade")
            if row[name]]
    args = [a for s in sets for a in ("--set", s)]
    outputs = json.loads(run("predict", products["runs"][fmt], *args, "--json").stdout)["outputs"]
    assert set(outputs["price"]) == {"prediction"}
    assert isinstance(outputs["price"]["prediction"], float)
    fragile = outputs["fragile"]
    assert set(fragile) == {"prediction", "probability", "probabilities"}
    # the label as the training table wrote it: yes/no in CSV, a JSON boolean in JSONL
    assert fragile["prediction"] in ((True, False) if fmt == "jsonl" else ("yes", "no"))
    assert fragile["probability"] == fragile["probabilities"]["true" if fmt == "jsonl" else "yes"]
    assert set(outputs["tags"]) == {"prediction", "probabilities"}
    assert set(outputs["tags"]["prediction"]) <= {"heavy", "premium", "handmade", "outdoor",
                                                  "bright"}
    assert all(outputs["tags"]["probabilities"][t] >= 0.5 for t in outputs["tags"]["prediction"])


def spoil(data: Path, out: Path, row: int, column: str, value: str) -> Path:
    """The training CSV with one cell replaced (``row`` counts data rows from 1)."""
    with (data / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    rows[row - 1][column] = value
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.mark.parametrize("column, value, message", [
    ("weight_kg", "heavy", "row 3: 'heavy': not a number"),
    ("handmade", "maybe", "row 3: 'maybe': not true/false, yes/no or 1/0"),
    ("price", "n/a", "row 3: 'n/a': not a number"),
    ("fragile", "perhaps", "row 3: 'perhaps'"),
])
def test_bad_cells_are_named_by_row(products, tmp_path, column, value, message):
    table = spoil(products["data"], products["data"] / f"bad_{column}.csv", 3, column, value)
    result = run("train", products["folder"] / "config_jsonl.yaml", "--data", table, "--out",
                 tmp_path / "run", check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and f"column {column!r}" in result.stderr
    assert not (tmp_path / "run" / "model").exists()
