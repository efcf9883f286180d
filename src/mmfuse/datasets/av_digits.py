"""Generator for AV-Digits, an audio-visual digit dataset in the spirit of AV-MNIST.

AV-MNIST (Vielzeuf et al. 2018, "CentralNet: a Multilayer Approach for Multimodal Fusion",
ECCV Workshops, arXiv:1808.07275) pairs each MNIST digit with a spoken digit of the same class
and degrades both, so that neither modality alone is enough and fusing them pays off. AV-Digits
does the same from sources that need no download: scikit-learn's bundled 8x8 handwritten digits
(1,797 images) and English digit words spoken by espeak-ng.

Layout::

    out_dir/
        images/train_00000.png, ..., images/test_00000.png, ...   28x28 greyscale PNG
        audio/train_00000.wav, ..., audio/test_00000.wav, ...     16 kHz mono 16-bit PCM, 1.0 s
        train.csv
        test.csv

Each CSV has the columns ``image,audio,label,voice``: the PNG and WAV paths relative to
``out_dir``, the digit as a string ``"0"`` .. ``"9"``, and the espeak-ng voice that spoke it.
A row's image and audio always show the same digit. In a ``missing_fraction`` of the rows one
modality is missing (half of them the image, half the audio, never both): its cell is empty and
no file is written; a row without audio also has an empty ``voice``.

How it is degraded, and why:

- Images: the 1,797 sources are split 70/30 per class into train and test pools, so no test row
  reuses a training source image. Each row upscales its source to 28x28 (bilinear), shifts it by
  up to ``IMAGE_MAX_SHIFT`` pixels, paints ``IMAGE_OCCLUDERS`` grey-to-black blocks over it and
  adds Gaussian noise (``IMAGE_NOISE_STD``). The sources are easy (simple classifiers reach
  ~99%); the blocks hide the strokes that tell a 3 from an 8 or a 9, so the image alone is not
  enough (a small CNN reaches roughly 75-80%).
- Audio: each digit word is spoken in ``VOICES`` at random speeds (``SPEED_WPM``) and pitches
  (``PITCH``); train and test draw their own speed/pitch settings, so no test clip reuses a
  training utterance. Each clip trims the silence, places the word at a random offset, adds
  white or pink noise at a random SNR (``SNR_DB``), sometimes a faint second digit
  (``BABBLE_*``), and scales to a random peak level (``PEAK_DB``). Synthetic speech is so
  regular that a small CNN still scores ~99% at 0 dB; the SNRs go far lower so that the audio
  alone is hard but mostly solvable (a small CNN on log-mel features reaches roughly 85-90%).

All sizes and ranges are module constants, so the difficulty can be tuned in one place. Output
is fully determined by the arguments (same seed, same CSVs and same file bytes).
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MmfuseError, require

__all__ = [
    "CSV_HEADER",
    "DIGIT_WORDS",
    "SNR_DB",
    "VOICES",
    "MissingDependencyError",
    "generate_av_digits",
]

CSV_HEADER: tuple[str, ...] = ("image", "audio", "label", "voice")

DIGIT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
"""The word espeak-ng speaks for each label."""

# Images.
IMAGE_SIZE = 28
TEST_SOURCE_FRACTION = 0.3
"""Share of each class's source images kept for the test split."""
IMAGE_MAX_SHIFT = 2
"""Largest shift of the digit, in pixels, along each axis."""
IMAGE_OCCLUDERS = (1, 2)
"""Inclusive range of occluding blocks per image."""
IMAGE_OCCLUDER_SIDE = (8, 14)
"""Inclusive range of each block's height and width, in pixels."""
IMAGE_OCCLUDER_LEVEL = (0.0, 0.5)
"""Range of a block's grey level (0 black, 1 white; the digit is white on black)."""
IMAGE_NOISE_STD = 0.2
"""Standard deviation of the additive Gaussian pixel noise, as a fraction of full scale."""

# Audio.
SAMPLE_RATE = 16_000
CLIP_SECONDS = 1.0
VOICES: tuple[str, ...] = (
    "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us+f2",
    "en+m3", "en-us+klatt", "en+f4", "en-gb-x-gbclan+m7", "en-us-nyc+f1")
"""espeak-ng voices (language, or language+variant); the ``voice`` column names one."""
SETTINGS_PER_VOICE = 3
"""Speed/pitch settings per digit, voice and split: the utterance pool's size per digit."""
SPEED_WPM = (120, 220)
"""Inclusive range of speaking speed, in words per minute."""
PITCH = (20, 80)
"""Inclusive range of espeak-ng pitch (0..99)."""
SNR_DB = (-15.0, 0.0)
"""Range of the speech-to-noise ratio in dB (speech power over the spoken word only)."""
NOISE_COLORS: dict[str, float] = {"white": 0.0, "pink": 1.0}
"""Noise kinds, by the exponent of their 1/f**exponent power spectrum. Brown noise (2.0) is
left out: its power lies below ~100 Hz, under the voice; a small CNN still scored 95% at -20 dB."""
BABBLE_PROBABILITY = 0.5
"""Chance that a clip also holds a faint utterance of another digit."""
BABBLE_DB = (-18.0, -10.0)
"""Range of the second utterance's power relative to the main one, in dB."""
PEAK_DB = (-18.0, -1.0)
"""Range of the clip's peak level, in dB below full scale."""

_TRIM_THRESHOLD = 0.01  # of the peak amplitude: below it, leading/trailing audio is silence
_TRIM_PAD = 0.01  # seconds kept either side of the word
_SYNTH_THREADS = 4
_SPLITS = ("train", "test")

_UtteranceKey = tuple[str, int, int, int]  # split, digit, voice index, setting index


class MissingDependencyError(MmfuseError, RuntimeError):
    """espeak-ng, the program AV-Digits (and Spoken-Numbers) speaks with, is not installed."""


@dataclass(frozen=True)
class _Row:
    """One planned row: what to draw and speak, before any noise is drawn."""

    label: int
    source: int  # index into load_digits()
    utterance: _UtteranceKey
    babble: _UtteranceKey | None
    missing: str | None  # "image", "audio" or None


def generate_av_digits(
    out_dir: str | Path,
    train_size: int = 3000,
    test_size: int = 1000,
    seed: int = 0,
    missing_fraction: float = 0.1,
) -> dict:
    """Generate an AV-Digits dataset on disk (AV-MNIST style: Vielzeuf et al. 2018).

    Writes ``images/{split}_{i:05d}.png``, ``audio/{split}_{i:05d}.wav`` and ``train.csv`` /
    ``test.csv`` with columns ``image,audio,label,voice`` (see the module docstring). Labels are
    balanced: each digit appears ``size // 10`` or ``size // 10 + 1`` times per split. Train and
    test use independent random streams spawned from ``seed``, so the test split does not depend
    on ``train_size``. ``out_dir`` is created if missing; files with the same names are
    overwritten, and the file of a missing cell is removed if an earlier run left one.

    Args:
        out_dir: Directory to write the dataset into.
        train_size: Number of training rows (>= 1).
        test_size: Number of test rows (>= 1).
        seed: Non-negative random seed.
        missing_fraction: Share of rows, per split, that miss one modality (0 <= f < 1),
            rounded to a whole number of rows; half miss the image, the rest the audio.

    Returns:
        Summary dict: ``out_dir`` (str), ``train_rows``, ``test_rows`` (ints),
        ``missing_image`` and ``missing_audio`` (dicts of counts by split) and ``seconds``.

    Raises:
        ValueError: If an argument is invalid.
        MissingDependencyError: (a RuntimeError) If espeak-ng is not on PATH.
        MmfuseError: If scikit-learn, soundfile or soxr is not installed.
    """
    start = time.perf_counter()
    sizes = {"train": _check_int("train_size", train_size, 1, "pass a positive row count"),
             "test": _check_int("test_size", test_size, 1, "pass a positive row count")}
    seed = _check_int("seed", seed, 0, "pass a non-negative integer seed")
    missing_fraction = _check_fraction(missing_fraction)
    espeak = _require_dependencies()

    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    images, targets = _load_digit_images()
    plans, rngs = _plan(seed, sizes, missing_fraction, targets)
    speech = _synthesize(espeak, _needed_utterances(plans), seed)
    summary: dict = {"out_dir": str(root), "missing_image": {}, "missing_audio": {}}
    for split in _SPLITS:
        _write_split(root, split, plans[split], images, speech, rngs[split])
        summary[f"{split}_rows"] = len(plans[split])
        summary["missing_image"][split] = sum(r.missing == "image" for r in plans[split])
        summary["missing_audio"][split] = sum(r.missing == "audio" for r in plans[split])
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def _check_int(name: str, value: object, minimum: int, fix: str) -> int:
    """Return ``value`` as an int, or raise ValueError naming it, if it is not an int >= min."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}; {fix}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}; {fix}.")
    return int(value)


def _check_fraction(value: object) -> float:
    """Return ``missing_fraction`` as a float in [0, 1), or raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"missing_fraction must be a number, got {value!r}; pass e.g. 0.1.")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"missing_fraction must be in [0, 1), got {value}; pass e.g. 0.1 "
                         "(0 for no missing modality).")
    return float(value)


def _require_dependencies(dataset: str = "av-digits",
                          modules: tuple[str, ...] = ("sklearn", "soundfile", "soxr")) -> str:
    """Return the espeak-ng executable's path; raise if it or a Python package is missing.

    ``dataset`` names the generator in the messages; ``modules`` are the packages it needs.
    """
    for module in modules:
        require(module, "datasets", f"generating {dataset}")
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise MissingDependencyError(
            f"{dataset} needs the espeak-ng speech synthesizer, which is not on PATH; install it "
            "with `apt-get install espeak-ng` (`make setup` does).")
    return espeak


def _load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: ``(1797, 8, 8)`` images in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target.astype(np.int64)


def _source_pools(seed: int, targets: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Split source image indices per class into disjoint train and test pools.

    Returns:
        ``{"train": pools, "test": pools}`` where ``pools[d]`` holds the sorted indices of
        digit ``d``'s source images in that split.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    pools: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(targets == digit))
        n_test = round(len(indices) * TEST_SOURCE_FRACTION)
        pools["test"].append(np.sort(indices[:n_test]))
        pools["train"].append(np.sort(indices[n_test:]))
    return pools


def _plan(seed: int, sizes: dict[str, int], missing_fraction: float, targets: np.ndarray
          ) -> tuple[dict[str, list[_Row]], dict[str, np.random.Generator]]:
    """Plan every row of both splits, given the source images' labels.

    Returns:
        The rows per split, and per split the random generator to render them with (the one
        that planned them, so planning and rendering form one deterministic stream).
    """
    pools = _source_pools(seed, targets)
    streams = np.random.SeedSequence([seed, 1]).spawn(len(_SPLITS))
    rngs = {split: np.random.default_rng(s) for split, s in zip(_SPLITS, streams, strict=True)}
    plans = {split: _plan_split(split, sizes[split], pools[split], missing_fraction, rngs[split])
             for split in _SPLITS}
    return plans, rngs


def _plan_split(split: str, n: int, pools: list[np.ndarray], missing_fraction: float,
                rng: np.random.Generator) -> list[_Row]:
    """Draw each row's label, source image, utterance, babble and missing modality."""
    labels = rng.permutation(np.arange(n) % 10)
    n_missing = int(np.floor(missing_fraction * n + 0.5))
    missing_rows = rng.choice(n, size=n_missing, replace=False)
    missing = dict.fromkeys(missing_rows[: n_missing // 2].tolist(), "image")
    missing |= dict.fromkeys(missing_rows[n_missing // 2:].tolist(), "audio")

    def utterance(digit: int) -> _UtteranceKey:
        return (split, digit, int(rng.integers(len(VOICES))),
                int(rng.integers(SETTINGS_PER_VOICE)))

    rows = []
    for i, label in enumerate(labels.tolist()):
        source = int(rng.choice(pools[label]))
        spoken = utterance(label)
        babble = None
        if rng.random() < BABBLE_PROBABILITY:
            babble = utterance((label + int(rng.integers(1, 10))) % 10)
        rows.append(_Row(label, source, spoken, babble, missing.get(i)))
    return rows


def _needed_utterances(plans: dict[str, list[_Row]]) -> list[_UtteranceKey]:
    """The utterances the planned rows speak, each once, in a fixed order."""
    keys = set()
    for rows in plans.values():
        for row in rows:
            if row.missing != "audio":
                keys.add(row.utterance)
                if row.babble is not None:
                    keys.add(row.babble)
    return sorted(keys)


def _voice_settings(seed: int) -> dict[str, np.ndarray]:
    """Per split, the ``(10, len(VOICES), SETTINGS_PER_VOICE, 2)`` speeds and pitches."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    shape = (10, len(VOICES), SETTINGS_PER_VOICE)
    return {split: np.stack([rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1, size=shape),
                             rng.integers(PITCH[0], PITCH[1] + 1, size=shape)], axis=-1)
            for split in _SPLITS}


def _synthesize(espeak: str, keys: list[_UtteranceKey], seed: int
                ) -> dict[_UtteranceKey, np.ndarray]:
    """Speak each utterance once with espeak-ng (a few processes at a time)."""
    settings = _voice_settings(seed)

    def speak(key: _UtteranceKey) -> np.ndarray:
        split, digit, voice, setting = key
        speed, pitch = settings[split][digit, voice, setting].tolist()
        return _speak(espeak, DIGIT_WORDS[digit], VOICES[voice], speed, pitch)

    with ThreadPoolExecutor(_SYNTH_THREADS) as pool:
        return dict(zip(keys, pool.map(speak, keys), strict=True))


def _speak(espeak: str, word: str, voice: str, speed: int, pitch: int,
           max_seconds: float | None = CLIP_SECONDS) -> np.ndarray:
    """One clean utterance: float32 at SAMPLE_RATE, silence trimmed, unit RMS.

    The trimmed utterance is cut to ``max_seconds`` (``None``: never cut).
    """
    import soundfile
    import soxr

    command = [espeak, "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch), word]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}): "
                           f"{result.stderr.decode(errors='replace').strip()}")
    samples, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    samples = soxr.resample(samples, rate, SAMPLE_RATE)
    samples = _trim_silence(samples)
    if max_seconds is not None:
        samples = samples[: round(max_seconds * SAMPLE_RATE)]
    return (samples / np.sqrt(np.mean(samples**2))).astype(np.float32)


def _trim_silence(samples: np.ndarray) -> np.ndarray:
    """Drop leading and trailing samples quieter than ``_TRIM_THRESHOLD`` of the peak."""
    loud = np.flatnonzero(np.abs(samples) > _TRIM_THRESHOLD * np.abs(samples).max())
    pad = round(_TRIM_PAD * SAMPLE_RATE)
    return samples[max(loud[0] - pad, 0): loud[-1] + pad + 1]


def _write_split(root: Path, split: str, rows: list[_Row], images: np.ndarray,
                 speech: dict[_UtteranceKey, np.ndarray], rng: np.random.Generator) -> None:
    """Render and write one split's images, clips and CSV."""
    import soundfile
    from PIL import Image

    with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for i, row in enumerate(rows):
            image, audio = f"images/{split}_{i:05d}.png", f"audio/{split}_{i:05d}.wav"
            if row.missing == "image":
                (root / image).unlink(missing_ok=True)
                image = ""
            else:
                pixels = _degrade_image(images[row.source], rng)
                Image.fromarray(pixels).save(root / image, format="PNG")
            voice = VOICES[row.utterance[2]]
            if row.missing == "audio":
                (root / audio).unlink(missing_ok=True)
                audio = voice = ""
            else:
                babble = None if row.babble is None else speech[row.babble]
                clip = _mix_audio(speech[row.utterance], babble, rng)
                soundfile.write(root / audio, clip, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            writer.writerow((image, audio, str(row.label), voice))


def _degrade_image(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upscale an 8x8 source in [0, 1] to 28x28, shift, occlude, add noise; uint8 out."""
    from PIL import Image

    size = IMAGE_SIZE
    big = np.asarray(Image.fromarray(source.astype(np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR))
    dy, dx = rng.integers(-IMAGE_MAX_SHIFT, IMAGE_MAX_SHIFT + 1, size=2)
    pixels = np.zeros((size, size), np.float32)
    pixels[max(dy, 0): size + min(dy, 0), max(dx, 0): size + min(dx, 0)] = \
        big[max(-dy, 0): size - max(dy, 0), max(-dx, 0): size - max(dx, 0)]
    for _ in range(rng.integers(IMAGE_OCCLUDERS[0], IMAGE_OCCLUDERS[1] + 1)):
        h, w = rng.integers(IMAGE_OCCLUDER_SIDE[0], IMAGE_OCCLUDER_SIDE[1] + 1, size=2)
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        pixels[top: top + h, left: left + w] = rng.uniform(*IMAGE_OCCLUDER_LEVEL)
    pixels += rng.normal(0.0, IMAGE_NOISE_STD, size=pixels.shape)
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def _mix_audio(speech: np.ndarray, babble: np.ndarray | None, rng: np.random.Generator
               ) -> np.ndarray:
    """Place a unit-RMS word in a clip with babble and noise at a random SNR; int16 out."""
    n = round(CLIP_SECONDS * SAMPLE_RATE)
    clip = _place(speech, n, rng)
    if babble is not None:
        clip += _place(babble, n, rng) * 10 ** (rng.uniform(*BABBLE_DB) / 20)
    exponent = list(NOISE_COLORS.values())[rng.integers(len(NOISE_COLORS))]
    snr_db = rng.uniform(*SNR_DB)
    clip += _colored_noise(n, exponent, rng) * 10 ** (-snr_db / 20)
    clip *= 10 ** (rng.uniform(*PEAK_DB) / 20) / np.abs(clip).max()
    return np.round(clip * 32767).astype(np.int16)


def _place(samples: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """An ``n``-sample float64 clip holding ``samples`` at a random offset."""
    clip = np.zeros(n)
    offset = rng.integers(0, n - len(samples) + 1)
    clip[offset: offset + len(samples)] = samples
    return clip


def _colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS Gaussian noise whose power spectrum falls as 1/f**exponent."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]  # no infinite gain at DC
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return noise / np.sqrt(np.mean(noise**2))
