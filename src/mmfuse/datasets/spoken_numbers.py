"""Generator for Spoken-Numbers, a speech + text translation dataset.

Each clip is an English number from 0 to 999 spoken by espeak-ng; each clip gives three rows
that pair it with a text prompt, and the target depends on both: ``"to digits"`` wants
``"312"``, ``"to french"`` wants ``"trois cent douze"`` and ``"to chinese"`` wants
``"三百一十二"``. Neither the audio alone (which language?) nor the prompt alone (which
number?) is enough, so a model has to fuse them and generate text. It needs no download.

Layout::

    out_dir/
        audio/train_00000.wav, ..., audio/test_00000.wav, ...   16 kHz mono 16-bit PCM, 3.0 s
        train.csv
        test.csv

Each CSV (UTF-8) has the columns ``audio,prompt,target,number,voice``: the WAV path relative
to ``out_dir``, the prompt, the target text, the spoken number as digits and the espeak-ng
voice that spoke it. Rows go clip by clip, each clip's three prompts in ``PROMPTS`` order.

How a clip is made: espeak-ng reads the number's digits (``"312"``), which it speaks as
natural English in each voice's dialect ("three hundred twelve" in American voices, "three
hundred and twelve" in British ones). The number is uniform on 0..999, the voice one of
``VOICES``, the speed from ``SPEED_WPM`` and the pitch from ``PITCH``. The silence is
trimmed, the words placed at a random offset in the clip, white or pink noise added at a
moderate SNR (``SNR_DB``: the task is translation, not hearing through noise), and the clip
scaled to a random peak level (``PEAK_DB``).

Each clip draws everything from its own random stream, spawned from ``seed`` by
``np.random.SeedSequence`` (one child per split, one grandchild per clip), so the test split
does not depend on ``train_size``, the clips can be made in any order, and the output is
fully determined by the arguments (same seed, same CSVs and same file bytes). Most test
numbers also occur in training, spoken by other voices or settings: the test measures new
recordings, not new numbers. The guarantee: training clips speak at even speeds and test
clips at odd ones, so no test clip repeats a training clip's (number, voice, speed, pitch)
setting, whatever the sizes; espeak-ng is deterministic and gives different audio for each
speed, so no test clip holds a clean utterance that training heard. (Where a test clip's
other settings match a training clip's, the speeds may differ by only 1 wpm, which is not
audible; that is rare, and the noise and offset still differ.)
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from .av_digits import (
    SAMPLE_RATE,
    _check_int,
    _colored_noise,
    _place,
    _require_dependencies,
    _speak,
)

__all__ = [
    "CSV_HEADER",
    "PROMPTS",
    "VOICES",
    "chinese",
    "french",
    "generate_spoken_numbers",
]

CSV_HEADER: tuple[str, ...] = ("audio", "prompt", "target", "number", "voice")

CLIP_SECONDS = 3.0
"""Clip length. The longest utterances at 140 wpm ("five hundred and seventy-nine" in en+f4,
"seven hundred and seventy-seven" in en-029) trim to about 2.35 s; a longer one is an error,
never cut, since a cut would drop words the targets name."""
VOICES: tuple[str, ...] = (
    "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbcwmd",
    "en+f3", "en-us+f2", "en+m3", "en+f4", "en-gb-x-gbclan+m7", "en-us+klatt")
"""espeak-ng voices (language, or language+variant); the ``voice`` column names one."""
SPEED_WPM = (140, 200)
"""Inclusive range of speaking speed, in words per minute: even speeds for train, odd for test."""
PITCH = (20, 80)
"""Inclusive range of espeak-ng pitch (0..99)."""
SNR_DB = (10.0, 30.0)
"""Range of the speech-to-noise ratio in dB (speech power over the spoken words only)."""
NOISE_COLORS: dict[str, float] = {"white": 0.0, "pink": 1.0}
"""Noise kinds, by the exponent of their 1/f**exponent power spectrum."""
PEAK_DB = (-18.0, -1.0)
"""Range of the clip's peak level, in dB below full scale."""

_FRENCH_UNITS = (
    "zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix",
    "onze", "douze", "treize", "quatorze", "quinze", "seize")
_FRENCH_TENS = {2: "vingt", 3: "trente", 4: "quarante", 5: "cinquante", 6: "soixante"}
_CHINESE_DIGITS = "零一二三四五六七八九"
_THREADS = 4  # espeak-ng processes at a time
_SPLITS = ("train", "test")


def french(n: int) -> str:
    """``n`` (0..999) in French words, traditional spelling (hyphens below 100 only).

    Examples: 21 "vingt et un", 71 "soixante et onze", 80 "quatre-vingts", 81 "quatre-vingt-un",
    200 "deux cents", 201 "deux cent un", 280 "deux cent quatre-vingts".

    Raises:
        ValueError: If ``n`` is not an integer from 0 to 999.
    """
    hundreds, rest = divmod(_check_number(n), 100)
    if hundreds == 0:
        return _french_below_100(rest)
    head = "cent" if hundreds == 1 else f"{_FRENCH_UNITS[hundreds]} cent"
    if rest == 0:
        return head if hundreds == 1 else head + "s"
    return f"{head} {_french_below_100(rest)}"


def _french_below_100(n: int) -> str:
    """0..99 in French; "quatre-vingts" keeps its s here, as it does after "cent"."""
    if n <= 16:
        return _FRENCH_UNITS[n]
    if n < 20:
        return f"dix-{_FRENCH_UNITS[n - 10]}"
    tens, unit = divmod(n, 10)
    if tens == 7:  # soixante-dix .. soixante-dix-neuf, but "soixante et onze"
        return "soixante et onze" if n == 71 else f"soixante-{_french_below_100(n - 60)}"
    if tens in (8, 9):  # quatre-vingt(s), quatre-vingt-un (no "et"), quatre-vingt-dix ..
        return "quatre-vingts" if n == 80 else f"quatre-vingt-{_french_below_100(n - 80)}"
    if unit == 0:
        return _FRENCH_TENS[tens]
    if unit == 1:
        return f"{_FRENCH_TENS[tens]} et un"
    return f"{_FRENCH_TENS[tens]}-{_FRENCH_UNITS[unit]}"


def chinese(n: int) -> str:
    """``n`` (0..999) in Chinese numerals: 12 "十二", 112 "一百一十二", 105 "一百零五".

    Raises:
        ValueError: If ``n`` is not an integer from 0 to 999.
    """
    hundreds, rest = divmod(_check_number(n), 100)
    tens, unit = divmod(rest, 10)
    if hundreds == 0:
        if tens == 0:
            return _CHINESE_DIGITS[unit]
        lead = "" if tens == 1 else _CHINESE_DIGITS[tens]  # 十二, not 一十二, on its own
        return lead + "十" + (_CHINESE_DIGITS[unit] if unit else "")
    text = _CHINESE_DIGITS[hundreds] + "百"
    if rest == 0:
        return text
    if tens == 0:
        return text + "零" + _CHINESE_DIGITS[unit]  # 一百零五
    return text + _CHINESE_DIGITS[tens] + "十" + (_CHINESE_DIGITS[unit] if unit else "")


PROMPTS: tuple[tuple[str, Callable[[int], str]], ...] = (
    ("to digits", str), ("to french", french), ("to chinese", chinese))
"""Each clip's rows, in order: the prompt and the function giving the target from the number."""


def generate_spoken_numbers(
    out_dir: str | Path,
    train_size: int = 4000,
    test_size: int = 500,
    seed: int = 0,
) -> dict:
    """Generate a Spoken-Numbers dataset on disk: spoken English numbers to digits/French/Chinese.

    Writes ``audio/{split}_{i:05d}.wav`` and ``train.csv`` / ``test.csv`` with columns
    ``audio,prompt,target,number,voice``, three rows per clip (see the module docstring).
    Train and test use independent random streams derived from ``seed``, so the test split
    does not depend on ``train_size``. ``out_dir`` is created if missing; files with the same
    names are overwritten.

    Args:
        out_dir: Directory to write the dataset into.
        train_size: Number of training clips (>= 1); the CSV has three rows per clip.
        test_size: Number of test clips (>= 1).
        seed: Non-negative random seed.

    Returns:
        Summary dict: ``out_dir`` (str), ``train_rows``, ``test_rows``, ``train_clips``,
        ``test_clips`` (ints) and ``seconds``.

    Raises:
        ValueError: If an argument is invalid.
        MissingDependencyError: (a RuntimeError) If espeak-ng is not on PATH.
        MmfuseError: If soundfile or soxr is not installed.
    """
    start = time.perf_counter()
    sizes = {"train": _check_int("train_size", train_size, 1, "pass a positive clip count"),
             "test": _check_int("test_size", test_size, 1, "pass a positive clip count")}
    seed = _check_int("seed", seed, 0, "pass a non-negative integer seed")
    espeak = _require_dependencies("spoken-numbers", ("soundfile", "soxr"))

    root = Path(out_dir)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for split in _SPLITS:
        with ThreadPoolExecutor(_THREADS) as pool:
            spoken = list(pool.map(partial(_write_clip, espeak, root, split, seed),
                                   range(sizes[split])))
        _write_csv(root, split, spoken)
    return {"out_dir": str(root),
            **{f"{split}_rows": sizes[split] * len(PROMPTS) for split in _SPLITS},
            **{f"{split}_clips": sizes[split] for split in _SPLITS},
            "seconds": round(time.perf_counter() - start, 2)}


def _check_number(n: object) -> int:
    """Return ``n`` as an int, or raise ValueError if it is not an integer from 0 to 999."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= 999:
        raise ValueError(f"n must be an integer from 0 to 999, got {n!r}; numbers of four or "
                         "more digits are not spelled out.")
    return int(n)


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one clip: a function of the seed, the split and the clip's index."""
    key = (_SPLITS.index(split), index)  # as SeedSequence(seed).spawn(2)[s].spawn(n)[index]
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _draw_setting(split: str, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A clip's number, voice index, speed and pitch; train speeds are even, test speeds odd."""
    number = int(rng.integers(1000))
    voice = int(rng.integers(len(VOICES)))
    first = SPEED_WPM[0] + (SPEED_WPM[0] % 2 != _SPLITS.index(split))  # first even/odd speed
    speed = int(rng.choice(np.arange(first, SPEED_WPM[1] + 1, 2)))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    return number, voice, speed, pitch


def _write_clip(espeak: str, root: Path, split: str, seed: int, index: int) -> tuple[int, str]:
    """Speak, mix and write one clip; return its number and voice."""
    import soundfile

    rng = _clip_rng(seed, split, index)
    number, voice, speed, pitch = _draw_setting(split, rng)
    speech = _speak(espeak, str(number), VOICES[voice], speed, pitch, max_seconds=None)
    clip = _mix(speech, rng)
    soundfile.write(root / _audio_path(split, index), clip, SAMPLE_RATE, subtype="PCM_16",
                    format="WAV")
    return number, VOICES[voice]


def _audio_path(split: str, index: int) -> str:
    return f"audio/{split}_{index:05d}.wav"


def _mix(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Place a unit-RMS utterance in a clip with noise at a random SNR; int16 out."""
    n = round(CLIP_SECONDS * SAMPLE_RATE)
    if len(speech) > n:  # cutting it would drop words and make the targets wrong
        raise RuntimeError(f"an utterance lasts {len(speech) / SAMPLE_RATE:.2f} s, longer than "
                           f"the {CLIP_SECONDS} s clip; raise CLIP_SECONDS or SPEED_WPM.")
    clip = _place(speech, n, rng)
    exponent = list(NOISE_COLORS.values())[rng.integers(len(NOISE_COLORS))]
    clip += _colored_noise(n, exponent, rng) * 10 ** (-rng.uniform(*SNR_DB) / 20)
    clip *= 10 ** (rng.uniform(*PEAK_DB) / 20) / np.abs(clip).max()
    return np.round(clip * 32767).astype(np.int16)


def _write_csv(root: Path, split: str, spoken: list[tuple[int, str]]) -> None:
    """Write one split's CSV: three rows per clip, in clip order."""
    with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for index, (number, voice) in enumerate(spoken):
            for prompt, target in PROMPTS:
                writer.writerow((_audio_path(split, index), prompt, target(number), str(number),
                                 voice))
