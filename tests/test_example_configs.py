"""Every shipped config under ``examples/`` is built and trained for one optimizer step.

tests/test_config.py only validates the examples; a check that runs when the model is built
(frame_cnn's attention heads must divide ``dim``, a fusion's sizes, a pretrained encoder's
weights) would slip past it. As torchtune builds each of its shipped configs, this trains each
example, its model section untouched, through the public API on a tiny table of the built-in
dataset it was written for (generated once per session), then predicts the validation rows.
A config with a ``tune:`` section also runs one trial of its search.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import mmfuse
from mmfuse.datasets.av_digits import MissingDependencyError, generate_av_digits
from mmfuse.datasets.moving_shapes import generate_moving_shapes
from mmfuse.datasets.photo_views import generate_photo_views
from mmfuse.datasets.products import generate_products
from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr
from mmfuse.datasets.spoken_numbers import generate_spoken_numbers

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))

# The built-in dataset each example trains on, by the start of its file name (``tune_`` left
# off), and the generator options that keep its table tiny: a few rows, small media.
DATASET_OF = {
    "av_digits": "av-digits",
    "moving_shapes": "moving-shapes",
    "photo_views": "photo-views",
    "products": "products",
    "sort_of_clevr": "sort-of-clevr",
    "spoken_numbers": "spoken-numbers",
}
TINY: dict[str, tuple[Callable[..., dict], dict]] = {
    "av-digits": (generate_av_digits, {"train_size": 10, "test_size": 5}),
    "moving-shapes": (generate_moving_shapes, {"train_size": 2, "test_size": 1}),  # clips
    "photo-views": (generate_photo_views, {"train_size": 10, "test_size": 5, "size": 32}),
    "products": (generate_products, {"train_size": 20, "test_size": 10, "image_size": 32}),
    "sort-of-clevr": (generate_sort_of_clevr, {"n_train": 1, "n_test": 1}),  # 20 rows each
    "spoken-numbers": (generate_spoken_numbers, {"train_size": 2, "test_size": 1}),  # clips
}
# One pass over the training table in one batch: a single optimizer step. The model section
# and every other training setting (schedule, warmup, precision) stay as shipped.
ONE_STEP = {"epochs": 1, "batch_size": 64, "early_stopping_patience": None,
            "checkpoint_every_steps": None}


def dataset_of(example: Path) -> str:
    """The built-in dataset ``example`` is written for, from its file name."""
    stem = example.stem.removeprefix("tune_")
    found = [name for prefix, name in DATASET_OF.items() if stem.startswith(prefix)]
    assert found, (f"{example.name}: no built-in dataset for it in DATASET_OF; add the one "
                   "whose columns its inputs and outputs read")
    return found[0]


def one_step(example: Path) -> dict:
    """The example's config with its training section set to a single optimizer step."""
    config = yaml.safe_load(example.read_text(encoding="utf-8"))
    config["training"] = {**(config.get("training") or {}), **ONE_STEP}
    return config


@pytest.fixture(scope="session")
def tiny_table(tmp_path_factory) -> Callable[[str], tuple[Path, Path]]:
    """``tiny_table(name)``: the (train, valid) CSVs of a tiny built-in dataset, generated on
    first use and shared by every example of that dataset."""
    made: dict[str, tuple[Path, Path]] = {}

    def table(name: str) -> tuple[Path, Path]:
        if name not in made:
            folder = tmp_path_factory.mktemp(name)
            generate, options = TINY[name]
            try:
                generate(folder, seed=0, **options)
            except MissingDependencyError as exc:  # espeak-ng: make setup installs it
                pytest.skip(str(exc))
            made[name] = (folder / "train.csv", folder / "test.csv")
        return made[name]

    return table


def count_rows(table: Path) -> int:
    return len(table.read_text(encoding="utf-8").splitlines()) - 1


def test_every_example_has_a_dataset():
    assert len(EXAMPLES) >= 24, f"found {len(EXAMPLES)} example configs"
    for example in EXAMPLES:
        assert dataset_of(example) in TINY


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_builds_and_trains_one_step(example, tiny_table, tmp_path):
    train, valid = tiny_table(dataset_of(example))
    config = one_step(example)
    model = mmfuse.Model.from_config(config)
    summary = model.fit(train, valid, out=tmp_path / "run")

    assert (summary["steps"], summary["epochs"]) == (1, 1)
    assert (summary["train_rows"], summary["valid_rows"]) == (count_rows(train),
                                                             count_rows(valid))
    assert math.isfinite(summary["best"]["train_loss"])
    assert math.isfinite(summary["best"]["valid_loss"])
    assert (tmp_path / "run" / "model" / "manifest.json").is_file()
    predictions = model.predict(valid)
    assert len(predictions) == count_rows(valid)
    outputs = {output["name"] for output in config["outputs"]}
    assert all(outputs <= set(p) for p in predictions), predictions[0]


TUNED = [p for p in EXAMPLES if "tune" in yaml.safe_load(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("example", TUNED, ids=[p.name for p in TUNED])
def test_tune_example_runs_one_trial(example, tiny_table, tmp_path):
    """The search's first trial: its drawn values applied to the config, built and trained."""
    pytest.importorskip("optuna", reason="the tune extra is not installed")
    from mmfuse.tuning import run_tune

    train, valid = tiny_table(dataset_of(example))
    config = one_step(example)
    summary = run_tune(copy.deepcopy(config), train, tmp_path / "study", trials=1, valid=valid,
                       live=False)
    assert (summary["trials"], summary["complete"], summary["failed"]) == (1, 1, 0), summary
    assert set(summary["best_params"]) == set(config["tune"]["parameters"])
