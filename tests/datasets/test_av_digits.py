"""Tests for the AV-Digits generator (mmfuse.datasets.av_digits) and its CLI entry."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("soxr")
pytest.importorskip("sklearn")

from mmfuse.datasets import av_digits  # noqa: E402
from mmfuse.datasets.av_digits import (  # noqa: E402
    CSV_HEADER,
    PEAK_DB,
    SNR_DB,
    VOICES,
    generate_av_digits,
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (make setup installs it)")

SIZES = {"train": 30, "test": 20}
CLIP_SAMPLES = 16_000


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """One small dataset (seed 0, the default missing fraction) and its summary."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    root = tmp_path_factory.mktemp("av_digits")
    summary = generate_av_digits(root, SIZES["train"], SIZES["test"], seed=0)
    return {"root": root, "summary": summary,
            **{split: _read_csv(root / f"{split}.csv")[1] for split in SIZES}}


def test_layout_and_file_formats(dataset):
    root = dataset["root"]
    for split, size in SIZES.items():
        header, rows = _read_csv(root / f"{split}.csv")
        assert tuple(header) == CSV_HEADER
        assert len(rows) == size == dataset["summary"][f"{split}_rows"]
        for row in rows:
            if row["image"]:
                assert row["image"].startswith(f"images/{split}_")
                with Image.open(root / row["image"]) as img:
                    assert (img.format, img.mode, img.size) == ("PNG", "L", (28, 28))
            if row["audio"]:
                assert row["audio"].startswith(f"audio/{split}_")
                info = soundfile.info(root / row["audio"])
                assert (info.samplerate, info.channels, info.frames) == (16_000, 1, CLIP_SAMPLES)
                assert (info.format, info.subtype) == ("WAV", "PCM_16")


def test_labels_match_their_planned_source_images_and_voices(dataset):
    images, targets = av_digits._load_digit_images()
    plans, _ = av_digits._plan(0, SIZES, 0.1, targets)
    for split in SIZES:
        rows, plan = dataset[split], plans[split]
        assert [r["label"] for r in rows] == [str(p.label) for p in plan]
        for row, planned in zip(rows, plan, strict=True):
            assert targets[planned.source] == planned.label  # image of the spoken class
            assert planned.utterance[1] == planned.label
            assert planned.babble is None or planned.babble[1] != planned.label
            assert (row["image"] == "") == (planned.missing == "image")
            assert (row["audio"] == "") == (planned.missing == "audio")
            assert row["voice"] == ("" if planned.missing == "audio"
                                    else VOICES[planned.utterance[2]])
        counts = Counter(r["label"] for r in rows)
        assert set(counts) == {str(d) for d in range(10)}  # balanced: every digit appears
        assert max(counts.values()) - min(counts.values()) <= 1


def test_image_looks_like_its_source_digit(dataset):
    """The degraded image correlates more with its own source than with other classes."""
    images, targets = av_digits._load_digit_images()
    plans, _ = av_digits._plan(0, SIZES, 0.1, targets)
    upscaled = np.stack([np.asarray(Image.fromarray(im.astype(np.float32)).resize((28, 28)))
                         for im in images]).reshape(len(images), -1)
    class_means = np.stack([upscaled[targets == d].mean(0) for d in range(10)])
    hits = total = 0
    for row, planned in zip(dataset["train"], plans["train"], strict=True):
        if row["image"]:
            pixels = np.asarray(Image.open(dataset["root"] / row["image"]), np.float32).ravel()
            scores = [np.corrcoef(pixels, m)[0, 1] for m in class_means]
            hits += int(np.argmax(scores)) == planned.label
            total += 1
    assert hits / total > 0.3  # chance is 0.1; occlusion and noise keep it far below 1


def test_train_and_test_source_images_are_disjoint():
    _, targets = av_digits._load_digit_images()
    pools = av_digits._source_pools(0, targets)
    train, test = np.concatenate(pools["train"]), np.concatenate(pools["test"])
    assert not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(len(targets)))
    assert 0.25 < len(test) / len(targets) < 0.35
    plans, _ = av_digits._plan(0, {"train": 3000, "test": 1000}, 0.1, targets)
    used = {split: {r.source for r in plans[split]} for split in plans}
    assert used["train"] <= set(train) and used["test"] <= set(test)


@needs_espeak
def test_missing_fraction_empties_exactly_one_cell(tmp_path):
    summary = generate_av_digits(tmp_path, 10, 11, seed=3, missing_fraction=0.5)
    # round(0.5 * 10) = 5 rows: 2 without image, 3 without audio; round(5.5) = 6: 3 and 3
    assert summary["missing_image"] == {"train": 2, "test": 3}
    assert summary["missing_audio"] == {"train": 3, "test": 3}
    for split in SIZES:
        rows = _read_csv(tmp_path / f"{split}.csv")[1]
        assert sum(not r["image"] for r in rows) == summary["missing_image"][split]
        assert sum(not r["audio"] for r in rows) == summary["missing_audio"][split]
        assert all(r["image"] or r["audio"] for r in rows)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*")}
    listed = {r[c] for s in SIZES for r in _read_csv(tmp_path / f"{s}.csv")[1]
              for c in ("image", "audio") if r[c]}
    assert written == listed  # no file for an empty cell


@needs_espeak
def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    generate_av_digits(tmp_path / "again", SIZES["train"], SIZES["test"], seed=0)
    generate_av_digits(tmp_path / "other", SIZES["train"], SIZES["test"], seed=1)
    root = dataset["root"]
    files = ["train.csv", "test.csv"] + [r[c] for r in dataset["test"][:4]
                                         for c in ("image", "audio") if r[c]]
    for name in files:
        assert (tmp_path / "again" / name).read_bytes() == (root / name).read_bytes(), name
    assert (tmp_path / "other" / "train.csv").read_bytes() != (root / "train.csv").read_bytes()
    audio = next(r["audio"] for r in dataset["train"] if r["audio"])
    assert (tmp_path / "other" / audio).read_bytes() != (root / audio).read_bytes()


def test_audio_is_loud_enough_and_noisy_throughout(dataset):
    root = dataset["root"]
    peak_range = 10 ** (np.array(PEAK_DB) / 20) * 32767
    for row in dataset["train"]:
        if row["audio"]:
            clip, _ = soundfile.read(root / row["audio"], dtype="int16")
            peak = np.abs(clip.astype(np.int64)).max()
            assert peak_range[0] - 1 <= peak <= peak_range[1] + 1
            frames = clip[: CLIP_SAMPLES // 320 * 320].reshape(-1, 320).astype(np.float64)
            floor = np.sqrt(np.percentile(np.mean(frames**2, axis=1), 10))
            assert floor > 0.01 * peak  # noise between and around the word, not silence


def test_mixing_hits_the_configured_snr_range():
    """A 1 kHz tone stands in for the word, so its power can be read off the spectrum."""
    n, rate = CLIP_SAMPLES, 16_000
    tone = np.sqrt(2) * np.sin(2 * np.pi * 1000 * np.arange(8000) / rate)  # unit RMS, 0.5 s
    estimates = []
    for seed in range(40):
        clip = av_digits._mix_audio(tone, None, np.random.default_rng(seed)).astype(np.float64)
        power = np.abs(np.fft.rfft(clip)) ** 2
        band = slice(1000 - 40, 1000 + 41)  # 1 Hz bins; the windowed tone spreads ~+-2 Hz
        local_noise = np.median(np.r_[power[900:950], power[1050:1100]])
        tone_power = power[band].sum() - local_noise * 81
        noise_power = power.sum() - power[band].sum() + local_noise * 81
        estimates.append(10 * np.log10(tone_power * (n / 8000) / noise_power))
    estimates = np.array(estimates)
    assert np.all(estimates > SNR_DB[0] - 2) and np.all(estimates < SNR_DB[1] + 2)  # +-1 dB error
    assert estimates.min() < SNR_DB[0] + 5 and estimates.max() > SNR_DB[1] - 5


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train_size": 0}, "train_size must be >= 1"),
    ({"test_size": -3}, "test_size must be >= 1"),
    ({"train_size": 2.5}, "train_size must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"missing_fraction": 1.0}, r"missing_fraction must be in \[0, 1\)"),
    ({"missing_fraction": -0.1}, r"missing_fraction must be in \[0, 1\)"),
    ({"missing_fraction": "10%"}, "missing_fraction must be a number"),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_av_digits(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_espeak_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        generate_av_digits(tmp_path / "out", 2, 2)


@needs_espeak
def test_cli_writes_av_digits(tmp_path):
    from typer.testing import CliRunner

    from mmfuse.cli import app

    result = CliRunner().invoke(app, ["datasets", "av-digits", str(tmp_path / "avd"),
                                      "--train", "20", "--test", "10", "--missing", "0.2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["train_rows"], summary["test_rows"]) == (20, 10)
    assert summary["missing_image"] == {"train": 2, "test": 1}
    assert len(_read_csv(tmp_path / "avd" / "train.csv")[1]) == 20


@pytest.mark.parametrize(("args", "message"), [
    (["sort-of-clevr", "--missing", "0.1"], "--missing applies only to av-digits"),
    (["av-digits", "--missing", "1.5"], "missing_fraction must be in"),
    (["av-digits", "--train", "0"], "train_size must be >= 1"),
    (["mnist"], "choose one of: sort-of-clevr, av-digits"),
])
def test_cli_rejects_bad_requests(tmp_path, args, message):
    from typer.testing import CliRunner

    from mmfuse.cli import app
    from mmfuse.errors import MmfuseError

    name, *options = args
    result = CliRunner().invoke(app, ["datasets", name, str(tmp_path / "out"), *options])
    assert isinstance(result.exception, MmfuseError)
    assert message in str(result.exception)
    assert not (tmp_path / "out").exists()
