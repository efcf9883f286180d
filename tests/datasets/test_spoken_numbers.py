"""Tests for the Spoken-Numbers generator (mmfuse.datasets.spoken_numbers)."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from mmfuse.datasets import spoken_numbers  # noqa: E402
from mmfuse.datasets.av_digits import MissingDependencyError, _speak  # noqa: E402
from mmfuse.datasets.spoken_numbers import (  # noqa: E402
    CSV_HEADER,
    PEAK_DB,
    SNR_DB,
    SPEED_WPM,
    VOICES,
    chinese,
    french,
    generate_spoken_numbers,
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (make setup installs it)")

SIZES = {"train": 4, "test": 3}
RATE = 16_000
CLIP_SAMPLES = 48_000
PROMPTS = ["to digits", "to french", "to chinese"]

FRENCH = {
    0: "zéro", 1: "un", 2: "deux", 7: "sept", 10: "dix", 11: "onze", 12: "douze",
    13: "treize", 14: "quatorze", 15: "quinze", 16: "seize", 17: "dix-sept", 18: "dix-huit",
    19: "dix-neuf", 20: "vingt", 21: "vingt et un", 22: "vingt-deux", 30: "trente",
    31: "trente et un", 41: "quarante et un", 51: "cinquante et un", 59: "cinquante-neuf",
    60: "soixante", 61: "soixante et un", 69: "soixante-neuf", 70: "soixante-dix",
    71: "soixante et onze", 72: "soixante-douze", 76: "soixante-seize",
    77: "soixante-dix-sept", 79: "soixante-dix-neuf", 80: "quatre-vingts",
    81: "quatre-vingt-un", 82: "quatre-vingt-deux", 89: "quatre-vingt-neuf",
    90: "quatre-vingt-dix", 91: "quatre-vingt-onze", 96: "quatre-vingt-seize",
    97: "quatre-vingt-dix-sept", 99: "quatre-vingt-dix-neuf", 100: "cent", 101: "cent un",
    110: "cent dix", 111: "cent onze", 117: "cent dix-sept", 121: "cent vingt et un",
    171: "cent soixante et onze", 180: "cent quatre-vingts", 181: "cent quatre-vingt-un",
    200: "deux cents", 201: "deux cent un", 221: "deux cent vingt et un",
    280: "deux cent quatre-vingts", 300: "trois cents", 312: "trois cent douze",
    380: "trois cent quatre-vingts", 571: "cinq cent soixante et onze",
    700: "sept cents", 790: "sept cent quatre-vingt-dix", 800: "huit cents",
    999: "neuf cent quatre-vingt-dix-neuf",
}

CHINESE = {
    0: "零", 1: "一", 2: "二", 9: "九", 10: "十", 11: "十一", 12: "十二", 19: "十九",
    20: "二十", 21: "二十一", 60: "六十", 99: "九十九", 100: "一百", 101: "一百零一",
    105: "一百零五", 110: "一百一十", 112: "一百一十二", 119: "一百一十九", 120: "一百二十",
    200: "二百", 210: "二百一十", 312: "三百一十二", 500: "五百", 505: "五百零五",
    909: "九百零九", 990: "九百九十", 999: "九百九十九",
}

_FRENCH_VALUES = {word: i for i, word in enumerate(
    "zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze "
    "seize".split())} | {"vingt": 20, "trente": 30, "quarante": 40, "cinquante": 50,
                         "soixante": 60}


def _parse_french(text: str) -> int:
    """Read a French number back, independently of french(): add words, multiply by cent/vingt."""
    total, previous = 0, ""
    for word in re.split(r"[ -]", text):
        if word in ("cent", "cents"):
            total = max(total, 1) * 100
        elif word in ("vingt", "vingts") and previous == "quatre":
            total += 80 - 4
        elif word != "et":
            total += _FRENCH_VALUES[word]
        previous = word
    return total


def _parse_chinese(text: str) -> int:
    """Read a Chinese number back, independently of chinese()."""
    digits = {c: i for i, c in enumerate("零一二三四五六七八九")}
    total, pending = 0, 0
    for char in text:
        if char in "百十":
            total += (pending or 1) * (100 if char == "百" else 10)
            pending = 0
        else:
            pending = digits[char]
    return total + pending


@pytest.mark.parametrize(("n", "words"), FRENCH.items())
def test_french_table(n, words):
    assert french(n) == words


@pytest.mark.parametrize(("n", "numerals"), CHINESE.items())
def test_chinese_table(n, numerals):
    assert chinese(n) == numerals


def test_every_number_reads_back_and_follows_the_spelling_rules():
    seen_fr, seen_zh = set(), set()
    for n in range(1000):
        fr, zh = french(n), chinese(n)
        assert _parse_french(fr) == n, fr
        assert _parse_chinese(zh) == n, zh
        seen_fr.add(fr)
        seen_zh.add(zh)
        # plural -s only when nothing follows; no hyphen touches cent; "et" only before un/onze
        assert ("cents" in fr) == (n >= 200 and n % 100 == 0)
        assert fr.endswith("vingts") == (n % 100 == 80)
        assert "-cent" not in fr and "cent-" not in fr
        assert re.findall(r" et (\w+)", fr) in ([], ["un"], ["onze"])
        assert (" et " in fr) == (n % 100 in (21, 31, 41, 51, 61, 71))
        assert ("零" in zh) == (n == 0 or (n >= 100 and n % 100 != 0 and n % 100 < 10))
    assert len(seen_fr) == len(seen_zh) == 1000


@pytest.mark.parametrize("bad", [-1, 1000, 12.0, "12", True, None])
@pytest.mark.parametrize("spell", [french, chinese])
def test_spelling_rejects_numbers_outside_0_to_999(spell, bad):
    with pytest.raises(ValueError, match="n must be an integer from 0 to 999"):
        spell(bad)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """One tiny dataset (seed 0) and its summary."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    root = tmp_path_factory.mktemp("spoken_numbers")
    summary = generate_spoken_numbers(root, SIZES["train"], SIZES["test"], seed=0)
    return {"root": root, "summary": summary,
            **{split: _read_csv(root / f"{split}.csv")[1] for split in SIZES}}


def test_summary_and_csv_rows(dataset):
    root, summary = dataset["root"], dataset["summary"]
    assert summary["out_dir"] == str(root)
    for split, clips in SIZES.items():
        header, rows = _read_csv(root / f"{split}.csv")
        assert tuple(header) == CSV_HEADER == ("audio", "prompt", "target", "number", "voice")
        assert summary[f"{split}_clips"] == clips
        assert summary[f"{split}_rows"] == len(rows) == 3 * clips
        for i in range(clips):
            group = rows[3 * i: 3 * i + 3]
            assert [r["prompt"] for r in group] == PROMPTS
            assert {r["audio"] for r in group} == {f"audio/{split}_{i:05d}.wav"}
            assert len({(r["number"], r["voice"]) for r in group}) == 1
            n = int(group[0]["number"])
            assert 0 <= n <= 999 and group[0]["number"] == str(n)
            assert [r["target"] for r in group] == [str(n), french(n), chinese(n)]
            assert group[0]["voice"] in VOICES
    written = {p.relative_to(root).as_posix() for p in (root / "audio").iterdir()}
    listed = {r["audio"] for split in SIZES for r in dataset[split]}
    assert written == listed


def test_csv_is_utf8(dataset):
    text = (dataset["root"] / "train.csv").read_bytes().decode("utf-8")
    number = int(dataset["train"][0]["number"])
    assert f",to chinese,{chinese(number)},{number}," in text
    assert f",to french,{french(number)},{number}," in text


def test_wav_format_and_speech_above_noise(dataset):
    root = dataset["root"]
    peak_range = 10 ** (np.array(PEAK_DB) / 20) * 32767
    for split in SIZES:
        for row in dataset[split][::3]:
            info = soundfile.info(root / row["audio"])
            assert (info.samplerate, info.channels, info.frames) == (RATE, 1, CLIP_SAMPLES)
            assert (info.format, info.subtype) == ("WAV", "PCM_16")
            clip, _ = soundfile.read(root / row["audio"], dtype="int16")
            clip = clip.astype(np.float64)
            assert peak_range[0] - 1 <= np.abs(clip).max() <= peak_range[1] + 1
            power = np.mean(clip.reshape(-1, 320) ** 2, axis=1)  # 20 ms frames
            floor = np.percentile(power, 10)  # >= 0.65 s of every clip is noise alone
            assert floor > 0  # noise throughout, no digital silence
            assert power.max() > 10 * floor  # speech at least 10 dB above the noise floor


@needs_espeak
def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    root = dataset["root"]
    generate_spoken_numbers(tmp_path / "again", SIZES["train"], SIZES["test"], seed=0)
    generate_spoken_numbers(tmp_path / "other", SIZES["train"], SIZES["test"], seed=1)
    names = ["train.csv", "test.csv", *sorted({r["audio"] for s in SIZES for r in dataset[s]})]
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (root / name).read_bytes(), name
    for name in ("train.csv", "audio/train_00000.wav", "audio/test_00000.wav"):
        assert (tmp_path / "other" / name).read_bytes() != (root / name).read_bytes(), name


@needs_espeak
def test_test_split_does_not_depend_on_train_size(dataset, tmp_path):
    root = dataset["root"]
    generate_spoken_numbers(tmp_path, train_size=2, test_size=SIZES["test"], seed=0)
    names = ["test.csv", *sorted({r["audio"] for r in dataset["test"]})]
    for name in names:
        assert (tmp_path / name).read_bytes() == (root / name).read_bytes(), name
    assert len(_read_csv(tmp_path / "train.csv")[1]) == 6


def test_test_settings_never_repeat_training_settings():
    """Train speeds are even and test speeds odd, so no (number, voice, speed, pitch) repeats."""
    draws = {split: [spoken_numbers._draw_setting(split, spoken_numbers._clip_rng(0, split, i))
                     for i in range(3000)] for split in ("train", "test")}
    for split, parity in (("train", 0), ("test", 1)):
        speeds = np.array([d[2] for d in draws[split]])
        assert np.all(speeds % 2 == parity)
        assert speeds.min() <= SPEED_WPM[0] + 1 and speeds.max() >= SPEED_WPM[1] - 1
        numbers = [d[0] for d in draws[split]]
        assert min(numbers) < 20 and max(numbers) > 980  # uniform over 0..999
        assert {d[1] for d in draws[split]} == set(range(len(VOICES)))
    assert not set(draws["train"]) & set(draws["test"])


@needs_espeak
@pytest.mark.parametrize(("number", "voice"), [("579", "en+f4"), ("777", "en-029")])
def test_longest_utterances_fit_the_clip(number, voice):
    """The slowest voices' longest numbers, at the slowest speed and lowest pitch."""
    speech = _speak(shutil.which("espeak-ng"), number, voice, SPEED_WPM[0], 20, max_seconds=None)
    assert 2.0 * RATE < len(speech) < 0.9 * CLIP_SAMPLES


def test_too_long_utterance_is_an_error_not_a_cut():
    with pytest.raises(RuntimeError, match="longer than the 3.0 s clip"):
        spoken_numbers._mix(np.ones(CLIP_SAMPLES + 1, np.float32), np.random.default_rng(0))


def test_mixing_hits_the_configured_snr_range():
    """A 1 kHz tone stands in for the words, so its power can be read off the spectrum."""
    tone = np.sqrt(2) * np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE)  # unit RMS, 1 s
    estimates = []
    for seed in range(30):
        clip = spoken_numbers._mix(tone, np.random.default_rng(seed)).astype(np.float64)
        power = np.abs(np.fft.rfft(clip)) ** 2  # 1/3 Hz bins: 1 kHz is bin 3000
        band = slice(3000 - 120, 3000 + 121)
        local_noise = np.median(np.r_[power[2700:2850], power[3150:3300]])
        tone_power = power[band].sum() - local_noise * 241
        noise_power = power.sum() - tone_power
        estimates.append(10 * np.log10(tone_power * (CLIP_SAMPLES / RATE) / noise_power))
    estimates = np.array(estimates)
    assert np.all(estimates > SNR_DB[0] - 2) and np.all(estimates < SNR_DB[1] + 2)
    assert estimates.min() < SNR_DB[0] + 5 and estimates.max() > SNR_DB[1] - 5


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train_size": 0}, "train_size must be >= 1"),
    ({"test_size": -3}, "test_size must be >= 1"),
    ({"train_size": 2.5}, "train_size must be an integer"),
    ({"test_size": True}, "test_size must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"seed": "0"}, "seed must be an integer"),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_spoken_numbers(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_espeak_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError,
                       match="spoken-numbers needs the espeak-ng.*apt-get install espeak-ng"):
        generate_spoken_numbers(tmp_path / "out", 2, 2)
    assert not (tmp_path / "out").exists()
