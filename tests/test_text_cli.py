"""Text outputs end to end: train from the CLI on a captioning table that is not a built-in one,
evaluate, predict with beam search, serve, and refuse ONNX export."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import PROMPTS, caption, make_shapes_captions
from test_cli import run

CONFIG = {
    "inputs": [
        {"name": "image", "type": "image", "preprocess": {"size": 32},
         "encoder": {"type": "cnn", "channels": [16, 16, 16], "pool": "mean", "dim": 64}},
        {"name": "prompt", "type": "text",
         "encoder": {"type": "gru", "embedding_dim": 16, "hidden_size": 32}},
    ],
    "fusion": {"type": "concat", "hidden": [64]},
    "outputs": [{"name": "caption", "type": "text", "decoder": "gru",
                 "head": {"dim": 64, "decoding": "beam", "beam_width": 3, "hypotheses": 2,
                          "max_length": 8}}],
    "training": {"epochs": 20, "batch_size": 32, "learning_rate": 0.003},
}


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> dict:
    """A run trained from the CLI on an image + prompt -> caption table."""
    folder = tmp_path_factory.mktemp("captions")
    train = make_shapes_captions(folder / "data", 250, seed=1, name="train.csv")
    test = make_shapes_captions(folder / "data", 40, seed=2, name="test.csv")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG, allow_unicode=True), encoding="utf-8")
    run("train", config, "--data", train, "--out", folder / "run")
    return {"run": folder / "run", "train": train, "test": test, "data": folder / "data"}


def test_cli_evaluate_reports_text_metrics(captions):
    result = json.loads(run("evaluate", captions["run"], "--data", captions["test"],
                            "--by", "prompt", "--json").stdout)
    metrics = result["outputs"]["caption"]
    assert set(metrics) == {"exact_match", "token_accuracy", "bleu", "chrf", "loss"}
    assert result["n"] == 80
    assert metrics["exact_match"] >= 0.8, metrics
    assert metrics["bleu"] > 50 and metrics["chrf"] > 80
    assert set(result["groups"]) == set(PROMPTS)
    shown = run("evaluate", captions["run"], "--data", captions["test"]).stdout
    assert "exact match" in shown and "chrf" in shown


def test_cli_predict_returns_text_and_beam_hypotheses(captions):
    import mmfuse
    from conftest import COLOURS, SHAPES

    model = mmfuse.Model.load(captions["run"])
    image = captions["data"] / "img" / "test_0000.png"
    for prompt in PROMPTS:
        out = json.loads(run("predict", captions["run"], "--set", f"image={image}",
                             "--set", f"prompt={prompt}", "--json").stdout)
        result = out["outputs"]["caption"]
        assert result == model.predict([{"image": image, "prompt": prompt}])[0]["caption"]
        # the prompt picks the language, the picture the words
        assert result["prediction"] in {caption(c, s, prompt) for c in COLOURS for s in SHAPES}
        assert len(result["hypotheses"]) == 2
        assert result["hypotheses"][0] == {"text": result["prediction"],
                                           "score": result["score"]}
        assert result["hypotheses"][1]["score"] <= result["score"] <= 0
    shown = run("predict", captions["run"], "--set", f"image={image}",
                "--set", f"prompt={PROMPTS[1]}").stdout
    assert result["prediction"] in shown and result["hypotheses"][1]["text"] in shown


def test_served_text_equals_cli_predict(captions):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from starlette.testclient import TestClient

    from mmfuse.serve import create_app, load_service

    image = captions["data"] / "img" / "test_0001.png"
    cli = json.loads(run("predict", captions["run"], "--set", f"image={image}",
                         "--set", f"prompt={PROMPTS[1]}", "--json").stdout)
    with TestClient(create_app(load_service(captions["run"]))) as client:
        described = client.get("/v1/model").json()["outputs"][0]
        assert described == {"name": "caption", "type": "text", "served_by": "head",
                             "decoder": "gru", "decoding": "beam", "max_length": 8,
                             "vocabulary_size": described["vocabulary_size"]}
        served = client.post("/v1/predict", files={"image": ("a.png", image.read_bytes())},
                             data={"prompt": PROMPTS[1]})
        assert served.status_code == 200
        assert served.json() == cli


def test_evaluation_is_reproduced_by_the_loaded_bundle(captions):
    import mmfuse

    model = mmfuse.Model.load(captions["run"])
    cli = json.loads(run("evaluate", captions["run"], "--data", captions["test"],
                         "--json").stdout)
    assert model.evaluate(captions["test"]) == cli


def test_onnx_export_of_a_text_output_is_refused_with_the_reason(captions, tmp_path):
    result = run("export", captions["run"], "--format", "onnx", "--out", tmp_path / "x",
                 check=False)
    assert result.returncode != 0
    assert "text output 'caption' cannot be exported" in result.stderr
    assert not (tmp_path / "x").exists()


def test_transformer_decoder_learns_the_captions(tmp_path):
    import mmfuse

    train = make_shapes_captions(tmp_path, 200, seed=3, name="train.csv")
    test = make_shapes_captions(tmp_path, 30, seed=4, name="test.csv")
    config = json.loads(json.dumps(CONFIG))
    config["outputs"][0].update(decoder="transformer",
                                head={"dim": 64, "heads": 4, "max_length": 8})
    config["training"].update(epochs=15, learning_rate=0.002)
    model = mmfuse.Model.from_config(config)
    model.fit(train)
    metrics = model.evaluate(test)["outputs"]["caption"]
    assert metrics["exact_match"] >= 0.5, metrics  # one caption in 9 fits a prompt
    assert "hypotheses" not in model.predict(test)[0]["caption"]  # greedy


@pytest.mark.parametrize(("name", "header"), [
    ("moving-shapes", ["video", "prompt", "caption", "objects"]),
    ("spoken-numbers", ["audio", "prompt", "target", "number", "voice"]),
])
def test_cli_writes_the_text_datasets(tmp_path, name, header):
    import csv
    import shutil

    if name == "spoken-numbers" and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    summary = json.loads(run("datasets", name, tmp_path, "--train", "3", "--test", "2",
                             "--json").stdout)
    assert (summary["train_clips"], summary["test_clips"]) == (3, 2)
    with open(tmp_path / "train.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == header and len(rows) == summary["train_rows"]
    shown = run("datasets", name, tmp_path / "again", "--train", "1", "--test", "1").stdout
    assert "1 + 1 clips" in shown
    refused = run("datasets", name, tmp_path / "bad", "--train", "0", check=False)
    assert refused.returncode != 0 and "train_size" in refused.stderr
