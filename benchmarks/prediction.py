"""The prediction stage on the built-in products table: neural heads, classic predictors on the
fused vectors, and scikit-learn on the tabular columns alone.

One neural model (``examples/products.yaml`` without its predictor) is trained on the
training split; its heads are evaluated on the test split. Then each classic predictor
(``training/predictors.py``) is fitted on the fused vectors of the training split, as
``outputs[].predictor`` does, and evaluated on the test split's fused vectors. Last, scikit-learn
models see only the tabular columns (weight, rating, brand one-hot, handmade), never the
picture or the description: what the table's numbers alone can tell.

Each target needs several modalities (the price needs the kind of product, seen only in the
picture, the material, read only in the description, the brand's tier and the weight), so the
tabular-only models are the floor that fusion must clear. Times are wall seconds on this
machine, in the same run.

    python benchmarks/prediction.py [--train 2000] [--test 500] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command, machine, markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PREDICTORS = {"price": ("linear", "random_forest", "gradient_boosting"),
              "fragile": ("logistic", "random_forest", "gradient_boosting")}


def neural(data: Path, folder: Path, epochs: int) -> tuple:
    """Train the example's neural model (heads only); the model, its test metrics, seconds."""
    import mmfuse

    config = yaml.safe_load((ROOT / "examples" / "products.yaml").read_text())
    for output in config["outputs"]:
        output.pop("predictor", None)
    config["training"]["epochs"] = epochs
    model = mmfuse.Model.from_config(config)
    began = time.perf_counter()
    model.fit(data / "train.csv", out=folder / "run", overwrite=True)
    seconds = time.perf_counter() - began
    return model, model.evaluate(data / "test.csv")["outputs"], seconds


def classic(model, data: Path) -> list[dict]:
    """Each classic predictor fitted on the fused training vectors, scored on the test ones."""
    from mmfuse.data.table import read_table
    from mmfuse.model import FUSED
    from mmfuse.outputs import output_type
    from mmfuse.predictors import fit_predictor

    pipeline = model.pipeline
    train = pipeline.encode(read_table(data / "train.csv"))
    test = pipeline.encode(read_table(data / "test.csv"))
    began = time.perf_counter()
    fused_train = pipeline.logits(train, fused=True, predictors=False)[FUSED].numpy()
    fused_seconds = time.perf_counter() - began
    fused_test = pipeline.logits(test, fused=True, predictors=False)[FUSED].numpy()
    column = {n: read_table(data / "test.csv").column(p.column)
              for n, p in pipeline.outputs.items()}
    rows = []
    for output, kinds in PREDICTORS.items():
        spec = next(o for o in pipeline.config.outputs if o.name == output)
        head, prep = pipeline.model.heads[output], pipeline.outputs[output]
        for kind in kinds:
            began = time.perf_counter()
            predictor = fit_predictor({"type": kind}, spec.type, len(prep.target_spec().labels),
                                      fused_train, train.targets[output], seed=0)
            seconds = time.perf_counter() - began
            scores = output_type(spec.type).scorer(
                head, predictor.outputs(fused_test), test.targets[output], column[output],
                prep)(np.arange(len(test)))
            rows.append({"output": output, "model": f"{kind} on fused vectors",
                         "metrics": scores, "seconds": seconds})
    return rows, fused_seconds


def tabular_only(data: Path) -> list[dict]:
    """scikit-learn on the tabular columns alone (histogram gradient boosting handles the blank
    cells itself)."""
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
    )
    from sklearn.metrics import (
        f1_score,
        jaccard_score,
        mean_absolute_error,
        r2_score,
        roc_auc_score,
    )

    from mmfuse.data.table import read_table

    train, test = read_table(data / "train.csv"), read_table(data / "test.csv")
    brands = sorted({r["brand"] for r in train.rows})

    def features(table) -> np.ndarray:
        out = []
        for r in table.rows:
            number = [float(r[c]) if r[c] not in ("", None) else np.nan
                      for c in ("weight_kg", "rating")]
            out.append(number + [float(r["handmade"] == "yes")]
                       + [float(r["brand"] == b) for b in brands])
        return np.asarray(out)

    x_train, x_test = features(train), features(test)
    price = [np.array([float(r["price"]) for r in t.rows]) for t in (train, test)]
    fragile = [np.array([r["fragile"] == "yes" for r in t.rows]) for t in (train, test)]
    labels = ["bright", "handmade", "heavy", "outdoor", "premium"]
    tags = [np.array([[lab in r["tags"].split() for lab in labels] for r in t.rows])
            for t in (train, test)]
    rows = []
    began = time.perf_counter()
    regressor = HistGradientBoostingRegressor(random_state=0).fit(x_train, price[0])
    guess = regressor.predict(x_test)
    rows.append({"output": "price", "model": "gradient boosting on tabular columns only",
                 "metrics": {"r2": r2_score(price[1], guess),
                             "mae": mean_absolute_error(price[1], guess)},
                 "seconds": time.perf_counter() - began})
    began = time.perf_counter()
    classifier = HistGradientBoostingClassifier(random_state=0).fit(x_train, fragile[0])
    p = classifier.predict_proba(x_test)[:, 1]
    rows.append({"output": "fragile", "model": "gradient boosting on tabular columns only",
                 "metrics": {"roc_auc": roc_auc_score(fragile[1], p),
                             "f1": f1_score(fragile[1], p >= 0.5)},
                 "seconds": time.perf_counter() - began})
    began = time.perf_counter()
    imputed = [np.nan_to_num(x, nan=np.nanmedian(x_train, axis=0)[0]) for x in (x_train, x_test)]
    forest = RandomForestClassifier(200, random_state=0).fit(imputed[0], tags[0])
    guess = forest.predict(imputed[1]).astype(bool)
    rows.append({"output": "tags", "model": "random forest on tabular columns only",
                 "metrics": {"jaccard": jaccard_score(tags[1], guess, average="samples",
                                                      zero_division=1.0),
                             "f1_macro": f1_score(tags[1], guess, average="macro",
                                                  zero_division=1.0)},
                 "seconds": time.perf_counter() - began})
    return rows


MAIN = {"price": ("r2", "mae"), "fragile": ("roc_auc", "f1"), "tags": ("jaccard", "f1_macro")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from mmfuse.datasets.products import generate_products

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate_products(folder / "data", args.train, args.test, seed=args.seed)
        model, head_metrics, neural_seconds = neural(folder / "data", folder, args.epochs)
        rows = [{"output": n, "model": "neural head", "metrics": head_metrics[n],
                 "seconds": neural_seconds} for n in MAIN]
        predictor_rows, fused_seconds = classic(model, folder / "data")
        rows += predictor_rows + tabular_only(folder / "data")
    baselines = {n: head_metrics[n]["baseline"] for n in MAIN}
    table = []
    for r in rows:
        first, second = MAIN[r["output"]]
        table.append([r["output"], r["model"], f"{r['metrics'][first]:.4f}",
                      f"{r['metrics'][second]:.4f}", f"{r['seconds']:.2f}"])
    for n, (first, second) in MAIN.items():
        table.append([n, "baseline (training mean / majority / commonest set)",
                      f"{baselines[n][first]:.4f}", f"{baselines[n][second]:.4f}", "-"])
    lines = [
        "# Prediction stage on the products table",
        "",
        f"Command: `{command()}`  ",
        f"Machine: {machine()}",
        "",
        f"{args.train} training and {args.test} test rows of `mmfuse datasets products` "
        f"(seed {args.seed}). The neural model is `examples/products.yaml` without its "
        f"predictor, trained {args.epochs} epochs; its time is the whole `fit` (the same time "
        "is given for its three heads, trained together). A classic predictor's time is its "
        f"fit on the fused vectors, computed once in {fused_seconds:.2f} s. The tabular-only "
        "models see weight, rating, handmade and the brand, never the picture or the text.",
        "",
        "Metrics per output, higher is better except MAE: price R², MAE (in the price's "
        "units); fragile ROC-AUC, F1; tags Jaccard, macro-F1.",
        "",
        markdown_table(["output", "model", "metric 1", "metric 2", "seconds"], table),
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prediction.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "prediction.json").write_text(json.dumps(
        {"args": vars(args), "rows": rows, "baselines": baselines,
         "fused_seconds": fused_seconds}, indent=1, default=float))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
