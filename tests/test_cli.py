"""End-to-end through the `mmfuse` command: train, evaluate, predict on a non-built-in table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

MMFUSE = [sys.executable, "-m", "mmfuse.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*MMFUSE, *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"}, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"mmfuse {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


@pytest.fixture(scope="module", params=["en", "zh"])
def trained(request, shapes_qa, tmp_path_factory) -> dict:
    """A run directory trained from the CLI on the English or the Chinese table."""
    from conftest import MINIMAL

    folder = tmp_path_factory.mktemp(f"cli_{request.param}")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(MINIMAL, allow_unicode=True))
    run_dir = folder / "run"
    run("train", config, "--data", shapes_qa[f"{request.param}_train"], "--out", run_dir,
        "--threads", "1")
    return {"run": run_dir, "test": shapes_qa[f"{request.param}_test"], "lang": request.param}


def test_train_writes_bundle_and_metrics(trained):
    bundle = trained["run"] / "model"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "config.json", "manifest.json", "model.safetensors", "preprocessors.json"]
    lines = (trained["run"] / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert {"epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy",
            "examples_per_second"} <= set(first)


def test_evaluate_json_by_column_has_documented_shape(trained):
    out = run("evaluate", trained["run"], "--data", trained["test"], "--by", "qtype", "--json")
    result = json.loads(out.stdout)
    assert result["n"] == 80
    answer = result["outputs"]["answer"]
    assert set(answer) >= {"accuracy", "majority_baseline"}
    assert set(result["groups"]) == {"colour", "shape"}
    for group in result["groups"].values():
        assert group["n"] == 40
        # a model that uses the image and the question beats always giving the top answer
        assert group["outputs"]["answer"]["accuracy"] > group["outputs"]["answer"][
            "majority_baseline"] + 0.2


def test_predict_json_has_documented_shape(trained):
    image = trained["test"].parent / "img" / "test_0000.png"
    question = "图形是什么颜色？" if trained["lang"] == "zh" else "What colour is the shape?"
    out = run("predict", trained["run"], "--set", f"image={image}", "--set",
              f"question={question}", "--json")
    result = json.loads(out.stdout)
    answer = result["outputs"]["answer"]
    probs = answer["probabilities"]
    assert answer["prediction"] == max(probs, key=probs.get)
    assert 1 <= len(probs) <= 10
    assert list(probs.values()) == sorted(probs.values(), reverse=True)
    assert answer["prediction"] in {"red", "green", "blue", "circle", "square", "triangle"}


def test_evaluate_without_data_uses_held_out_rows(trained):
    result = json.loads(run("evaluate", trained["run"], "--json").stdout)
    assert 0 < result["n"] < 200  # 10% of the 600 training rows


def test_altered_weights_refuse_to_load(trained, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained["run"], copy)
    weights = copy / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = run("evaluate", copy, "--data", trained["test"], check=False)
    assert out.returncode == 2
    assert "model.safetensors" in out.stderr and "sha256" in out.stderr
    assert "Traceback" not in out.stderr


def test_misspelt_key_fails_before_reading_data(tmp_path, minimal_config):
    minimal_config["training"]["epochz"] = 3
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(minimal_config))
    out = run("train", config, "--data", tmp_path / "does-not-exist.csv", "--out",
              tmp_path / "run", check=False)
    assert out.returncode == 2
    assert "training.epochz" in out.stderr and "did you mean 'epochs'" in out.stderr
    assert "does-not-exist" not in out.stderr  # the config failed first
    assert not (tmp_path / "run").exists()


def test_predict_rejects_unknown_input_name(trained):
    out = run("predict", trained["run"], "--set", "picture=x.png", check=False)
    assert out.returncode == 2 and "picture" in out.stderr and "image" in out.stderr


def test_list_fusions_json_names_registered_fusions():
    result = json.loads(run("list", "fusions", "--json").stdout)
    assert {"sum", "product", "concat"} <= {f["name"] for f in result["fusions"]}


def test_list_encoders_json_names_the_input_types_each_reads():
    result = json.loads(run("list", "encoders", "--json").stdout)
    inputs = {e["name"]: e["inputs"] for e in result["encoders"]}
    assert inputs["audio_cnn"] == ["audio"] and inputs["frame_cnn"] == ["video"]
    assert inputs["gru"] == ["text", "audio"] and inputs["cnn"] == ["image"]


def test_datasets_command_writes_sort_of_clevr(tmp_path):
    run("datasets", "sort-of-clevr", tmp_path / "soc", "--train", "3", "--test", "2",
        "--seed", "5")
    assert len((tmp_path / "soc" / "train.csv").read_text().splitlines()) == 1 + 3 * 20
    assert len(list((tmp_path / "soc" / "images").glob("*.png"))) == 5


def test_unreadable_image_reports_row_and_path(tmp_path, minimal_config):
    from conftest import make_shapes_qa

    table = make_shapes_qa(tmp_path, 6)
    (tmp_path / "img" / "train_0003.png").write_bytes(b"not a png at all")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(minimal_config))
    out = run("train", config, "--data", table, "--out", tmp_path / "run", check=False)
    assert out.returncode == 2
    assert "row 7" in out.stderr and "img/train_0003.png" in out.stderr


def test_path_outside_table_folder_is_rejected(tmp_path, minimal_config):
    from conftest import make_shapes_qa

    data = tmp_path / "data"
    table = make_shapes_qa(data, 4)
    text = table.read_text().replace("img/train_0002.png", "../secret.png", 1)
    table.write_text(text)
    (tmp_path / "secret.png").write_bytes((data / "img" / "train_0000.png").read_bytes())
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(minimal_config))
    out = run("train", config, "--data", table, "--out", tmp_path / "run", check=False)
    assert out.returncode == 2 and "outside" in out.stderr and "--data-root" in out.stderr




def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``mmfuse ARGS`` in this process: exit status and what it wrote to stderr."""
    from mmfuse.cli import main

    monkeypatch.setattr(sys, "argv", ["mmfuse", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


VERBS = ["train", "evaluate", "predict", "serve", "export", "datasets", "list", "demo"]


@pytest.mark.parametrize("verb", VERBS)
def test_unknown_option_prints_usage_and_exits_2(verb, monkeypatch, capsys):
    code, stderr = run_main(monkeypatch, capsys, verb, "--bogus")
    assert code == 2
    assert "Traceback" not in stderr
    assert f"Usage: mmfuse {verb}" in stderr
    assert "error: No such option: --bogus; options: " in stderr


@pytest.mark.parametrize("verb", [v for v in VERBS if v != "demo"])  # demo needs no argument
def test_missing_argument_prints_usage_and_exits_2(verb, monkeypatch, capsys):
    code, stderr = run_main(monkeypatch, capsys, verb)
    assert code == 2
    assert "Traceback" not in stderr
    assert f"Usage: mmfuse {verb}" in stderr
    assert "error: Missing argument" in stderr


@pytest.mark.parametrize(("args", "hint"), [
    (["trian"], "Did you mean 'train'?"),
    (["evalute"], "Did you mean 'evaluate'?"),
    (["train", "model.yaml", "--dta", "t.csv"], "(did you mean '--data'?)"),
    (["predict", "runs/x", "--sett", "a=b"], "(did you mean '--set'?)"),
    (["evaluate", "runs/x", "--jsn"], "(did you mean '--json'?)"),
])
def test_misspelt_command_or_option_gets_did_you_mean(args, hint, monkeypatch, capsys):
    code, stderr = run_main(monkeypatch, capsys, *args)
    assert code == 2
    assert "Traceback" not in stderr
    assert "Usage: mmfuse" in stderr
    assert hint in stderr


def test_usage_error_from_the_installed_command():
    """The console script itself, not just main(): no traceback, status 2."""
    result = run("trian", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Did you mean 'train'?" in result.stderr
