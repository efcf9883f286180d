"""End-to-end from the CLI on audio and video tables that are not built-in datasets.

- image + audio: the label is (image colour, tone pitch), so neither input alone can give more
  than half the answers; WAVs at 44.1 kHz stereo and 22.05 kHz mono share one column, and some
  rows miss one input.
- video + text: MP4 clips of different lengths and frame sizes; the question asks for the
  direction of motion or the colour, so the answer needs both the clip and the question.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from media import moving_square, tone, write_audio, write_video
from test_cli import run

PITCHES = {"low": 330.0, "high": 1320.0}
COLOURS = {"red": (220, 40, 40), "blue": (40, 40, 220)}


def write_table(path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def make_image_audio(folder, n: int, seed: int, name: str, missing: float = 0.0) -> None:
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour, pitch = rng.choice(list(COLOURS)), rng.choice(list(PITCHES))
        pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 30, (16, 16, 3)), 0, 255)
        image = f"img/{name}_{i}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(folder / image)
        stereo = i % 2 == 0  # half 44.1 kHz stereo, half 22.05 kHz mono
        rate = 44100 if stereo else 22050
        wave = tone(PITCHES[pitch] * rng.uniform(0.95, 1.05), rng.uniform(0.3, 0.6), rate,
                    channels=2 if stereo else 1, noise=0.05, seed=seed * 1000 + i)
        audio = f"wav/{name}_{i}.wav"
        write_audio(folder / audio, wave, rate)
        row = {"image": image, "audio": audio, "label": f"{colour}_{pitch}"}
        if rng.random() < missing:
            row[rng.choice(["image", "audio"])] = ""
        rows.append(row)
    write_table(folder / f"{name}.csv", rows)


IMAGE_AUDIO = {
    "inputs": [
        {"name": "image", "type": "image", "preprocess": {"size": 16},
         "encoder": {"type": "cnn", "channels": [8, 8], "pool": "mean", "dim": 16}},
        {"name": "audio", "type": "audio", "preprocess": {"n_mels": 24, "max_seconds": 1.0},
         "encoder": {"type": "audio_cnn", "channels": [8, 8], "dim": 16},
         "modality_dropout": 0.2},
    ],
    "fusion": {"type": "concat", "hidden": [32]},
    "outputs": [{"name": "label", "type": "category"}],
    "training": {"epochs": 25, "batch_size": 16, "learning_rate": 0.01, "valid_fraction": 0,
                 "early_stopping_patience": None},
}


@pytest.fixture(scope="module")
def image_audio_run(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("image_audio")
    make_image_audio(folder, 96, seed=0, name="train", missing=0.1)
    make_image_audio(folder, 40, seed=1, name="test")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(IMAGE_AUDIO))
    run("train", config, "--data", folder / "train.csv", "--out", folder / "run",
        "--threads", "1")
    return {"folder": folder, "run": folder / "run"}


def evaluate(run_dir, table, *extra) -> dict:
    result = json.loads(run("evaluate", run_dir, "--data", table, "--json", *extra).stdout)
    return result["outputs"]["label"]


@pytest.mark.slow  # make test-slow (CI runs it too)
def test_image_and_audio_together_answer_what_neither_can_alone(image_audio_run):
    test = image_audio_run["folder"] / "test.csv"
    both = evaluate(image_audio_run["run"], test)
    assert both["accuracy"] >= 0.85, both
    for name in ("image", "audio"):
        alone = evaluate(image_audio_run["run"], test, "--drop", name)
        # without one input at most half the labels are recoverable (plus luck)
        assert alone["accuracy"] <= 0.7, (name, alone)
        assert alone["accuracy"] > 0.3, "modality dropout keeps the other input useful"


def test_predict_without_an_input_uses_the_placeholder(image_audio_run):
    folder = image_audio_run["folder"]
    out = run("predict", image_audio_run["run"], "--set", f"image={folder / 'img/test_0.png'}",
              "--json")
    prediction = json.loads(out.stdout)["outputs"]["label"]
    assert prediction["prediction"] in {f"{c}_{p}" for c in COLOURS for p in PITCHES}
    with_audio = run("predict", image_audio_run["run"], "--set",
                     f"image={folder / 'img/test_0.png'}", "--set",
                     f"audio={folder / 'wav/test_0.wav'}", "--json")
    assert json.loads(with_audio.stdout)["outputs"]["label"]["probabilities"] != \
        prediction["probabilities"]


def test_drop_names_an_unknown_input(image_audio_run):
    result = run("evaluate", image_audio_run["run"], "--data",
                 image_audio_run["folder"] / "test.csv", "--drop", "speech", check=False)
    assert result.returncode == 2
    assert "'speech'" in result.stderr and "image, audio" in result.stderr


@pytest.mark.parametrize(("damage", "expected"), [
    ("corrupt", "row 3: 'wav/train_2.wav': "),
    ("delete", "row 3: 'wav/train_2.wav': file not found"),
])
def test_unreadable_audio_is_reported_with_row_and_path(tmp_path, damage, expected):
    make_image_audio(tmp_path, 6, seed=3, name="train")
    broken = tmp_path / "wav/train_2.wav"
    if damage == "corrupt":
        broken.write_bytes(b"not audio at all")
    else:
        broken.unlink()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(IMAGE_AUDIO))
    result = run("train", config, "--data", tmp_path / "train.csv", "--out", tmp_path / "run",
                 check=False)
    assert result.returncode == 2
    assert "unreadable audio file(s) in column 'audio'" in result.stderr
    assert expected in result.stderr


# --- video + text ---------------------------------------------------------------------------------

QUESTIONS = {"direction": "which way does the square move?", "colour": "what colour is it?"}
SQUARE_COLOURS = {"red": (230, 40, 40), "green": (40, 200, 40)}
SIZES = [(48, 64), (64, 48), (40, 40), (72, 96)]


def make_video_text(folder, n_clips: int, seed: int, name: str) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_clips):
        direction = int(rng.choice([-1, 1]))
        colour = str(rng.choice(list(SQUARE_COLOURS)))
        height, width = SIZES[i % len(SIZES)]
        frames = moving_square(int(rng.integers(6, 15)), height, width, direction,
                               SQUARE_COLOURS[colour])
        clip = f"clips/{name}_{i}.mp4"
        write_video(folder / clip, frames, fps=10)
        answers = {"direction": "right" if direction > 0 else "left", "colour": colour}
        for qtype, question in QUESTIONS.items():
            rows.append({"clip": clip, "question": question, "answer": answers[qtype],
                         "qtype": qtype})
    write_table(folder / f"{name}.csv", rows)


VIDEO_TEXT = {
    "inputs": [
        {"name": "clip", "type": "video", "preprocess": {"size": 24, "frames": 6},
         "encoder": {"type": "frame_cnn", "channels": [8, 16], "dim": 32, "temporal": "gru",
                     "pool": "flatten"}},
        {"name": "question", "type": "text", "encoder": {"type": "bow", "dim": 16}},
    ],
    "fusion": {"type": "concat", "hidden": [32]},
    "outputs": [{"name": "answer", "type": "category"}],
    "training": {"epochs": 30, "batch_size": 16, "learning_rate": 0.005, "valid_fraction": 0,
                 "early_stopping_patience": None},
}


@pytest.mark.slow  # make test-slow (CI runs it too)
def test_video_and_text_from_the_cli(tmp_path):
    make_video_text(tmp_path, 48, seed=0, name="train")
    make_video_text(tmp_path, 16, seed=1, name="test")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(VIDEO_TEXT))
    run("train", config, "--data", tmp_path / "train.csv", "--out", tmp_path / "run",
        "--threads", "1")
    out = run("evaluate", tmp_path / "run", "--data", tmp_path / "test.csv", "--by", "qtype",
              "--json")
    groups = json.loads(out.stdout)["groups"]
    for qtype in QUESTIONS:
        accuracy = groups[qtype]["outputs"]["answer"]["accuracy"]
        assert accuracy >= 0.85, (qtype, accuracy)
