"""Tests for the probe tasks (mmfuse.datasets.probes)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmfuse.datasets.probe_rows import (
    COLOURS,
    FLASH_FRAMES,
    PHOTO_SIZE,
    SAMPLE_RATES,
    SIZES,
    VIDEO_FRAMES,
    _french,
)
from mmfuse.datasets.probes import PROBES, generate_probe
from mmfuse.errors import MmfuseError

N_TRAIN, N_TEST = 20, 10
NAMES = ["image_qa", "image_count", "image_caption", "photo_qa", "video_qa", "video_count",
         "video_caption", "audio_order", "audio_qa", "audio_caption", "text_order",
         "text_negation", "text_translate"]
CLASSES = {"image_qa": {"red", "green", "blue", "yellow", "left", "right", "top", "bottom"},
           "image_count": {"1", "2", "3", "4"},
           "video_qa": {"red", "green", "blue", "yellow", "left", "right", "up", "down"},
           "video_count": {"1", "2", "3"}, "audio_order": {"rising", "falling"},
           "audio_qa": {"high", "low", "loud", "quiet", "early", "late"},
           "text_negation": {"positive", "negative"}}
SATURATED = 80  # max - min channel: the grey background has 0, every shape colour > 150


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every probe generated once with seed 0: name -> output folder."""
    root = tmp_path_factory.mktemp("probes")
    return {name: _generate(name, root / name) for name in PROBES}


def _generate(name: str, out_dir: Path, n_train: int = N_TRAIN, seed: int = 0) -> Path:
    if PROBES[name].modality == "video":
        pytest.importorskip("av")
    if PROBES[name].modality == "audio":
        pytest.importorskip("soundfile")
    summary = generate_probe(name, out_dir, n_train, N_TEST, seed)
    assert summary["train_rows"] == n_train and summary["test_rows"] == N_TEST
    return out_dir


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _rows(out_dir: Path, split: str = "test") -> list[dict[str, str]]:
    return _read(out_dir / f"{split}.csv")[1]


def _image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _video(path: Path) -> np.ndarray:
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _audio(path: Path) -> tuple[np.ndarray, int]:
    soundfile = pytest.importorskip("soundfile")
    info = soundfile.info(str(path))
    assert (info.channels, info.subtype) == (1, "PCM_16")
    return soundfile.read(str(path))


def _shape_mask(pixels: np.ndarray) -> np.ndarray:
    """``[..., H, W]`` pixels of a shape (coloured), not of the grey background."""
    return pixels.max(axis=-1).astype(int) - pixels.min(axis=-1) > SATURATED


def _colour(pixels: np.ndarray, mask: np.ndarray) -> str:
    """The ``COLOURS`` name nearest the mean of the masked pixels."""
    mean = pixels[mask].mean(axis=0)
    return min(COLOURS, key=lambda name: float(np.sum((np.array(COLOURS[name]) - mean) ** 2)))


def _centre(mask: np.ndarray) -> np.ndarray:
    """Mean ``(x, y)`` of a 2-D mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _direction(frames: np.ndarray) -> str:
    masks = _shape_mask(frames)
    dx, dy = _centre(masks[-1]) - _centre(masks[0])
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _pitches(wave: np.ndarray, rate: int) -> list[str]:
    """The low/high tones of a clip in order: loud 20 ms windows, by their peak frequency."""
    hop = rate // 50
    windows = wave[: len(wave) // hop * hop].reshape(-1, hop)
    rms = np.sqrt(np.mean(windows**2, axis=1))
    loud = rms > 0.3 * rms.max()
    peaks = np.fft.rfftfreq(hop, 1 / rate)[np.abs(np.fft.rfft(windows, axis=1)).argmax(axis=1)]
    tones, previous = [], False
    for is_loud, freq in zip(loud, peaks, strict=True):
        if is_loud and not previous:
            tones.append("low" if freq < 800 else "high")
        previous = is_loud
    return tones


def test_probes_are_listed_in_order_with_valid_fields() -> None:
    assert list(PROBES) == NAMES
    for name, probe in PROBES.items():
        assert probe.name == name
        assert probe.modality in {"image", "video", "audio", "text"}
        assert probe.output in {"category", "text"}
        assert set(probe.inputs.values()) <= {"image", "video", "audio", "text"}
        assert probe.modality in probe.inputs.values()
        assert probe.properties and probe.description


def test_unknown_probe_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(MmfuseError, match="image_qa.*text_translate"):
        generate_probe("image_qna", tmp_path, 2, 2)


def test_bad_counts_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(MmfuseError, match="n_test"):
        generate_probe("text_order", tmp_path, 2, 0)
    with pytest.raises(MmfuseError, match="seed"):
        generate_probe("text_order", tmp_path, 2, 2, seed=-1)


@pytest.mark.parametrize("name", NAMES)
def test_tables_have_the_probe_columns(generated: dict[str, Path], name: str) -> None:
    probe = PROBES[name]
    expected = [*probe.inputs, probe.target, *([probe.group] if probe.group else [])]
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        header, rows = _read(generated[name] / f"{split}.csv")
        assert header == expected == list(probe.columns)
        assert len(rows) == n
        assert all(row[probe.target] for row in rows)
        if name in CLASSES:
            assert {row[probe.target] for row in rows} <= CLASSES[name]


@pytest.mark.parametrize("name", NAMES)
def test_media_decode_with_varied_formats(generated: dict[str, Path], name: str) -> None:
    probe = PROBES[name]
    column = next((c for c, kind in probe.inputs.items() if kind != "text"), None)
    if column is None:
        assert not (generated[name] / "media").exists()
        return
    for row in _rows(generated[name], "train") + _rows(generated[name]):
        path = generated[name] / row[column]
        if probe.modality == "image":
            pixels = _image(path)
            sizes = (PHOTO_SIZE,) if name == "photo_qa" else SIZES
            assert pixels.shape[0] == pixels.shape[1] in sizes
        elif probe.modality == "video":
            frames = _video(path)
            allowed = FLASH_FRAMES if name == "video_count" else VIDEO_FRAMES
            assert len(frames) in allowed and frames.shape[1] == frames.shape[2] in SIZES
        else:
            wave, rate = _audio(path)
            assert rate in SAMPLE_RATES and 1.0 <= len(wave) / rate <= 2.0


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output_and_test_split_ignores_n_train(
        generated: dict[str, Path], tmp_path: Path, name: str) -> None:
    again = _generate(name, tmp_path / "again")
    longer = _generate(name, tmp_path / "longer", n_train=N_TRAIN + 10)
    other = _generate(name, tmp_path / "other", seed=1)
    for split in ("train", "test"):
        assert (again / f"{split}.csv").read_bytes() == (generated[name] / f"{split}.csv"
                                                          ).read_bytes()
    assert (longer / "test.csv").read_bytes() == (generated[name] / "test.csv").read_bytes()
    assert (other / "test.csv").read_bytes() != (generated[name] / "test.csv").read_bytes()
    media = sorted((generated[name] / "media").glob("test_*"))
    for path in media[:2]:
        assert (longer / "media" / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_majority_baseline_is_the_top_test_share(tmp_path: Path, name: str) -> None:
    pytest.importorskip("av")
    pytest.importorskip("soundfile")
    summary = generate_probe(name, tmp_path, 2, 8, seed=3)
    targets = [row[PROBES[name].target] for row in _rows(tmp_path)]
    top = max(targets.count(t) for t in targets)
    assert summary["majority_baseline"] == pytest.approx(top / 8, abs=1e-4)
    assert summary["name"] == name and summary["seconds"] >= 0


def test_image_qa_answers_match_the_pixels(tmp_path: Path) -> None:
    out = _generate("image_qa", tmp_path, n_train=1)
    generate_probe("image_qa", out, 1, 60)
    for row in _rows(out):
        pixels = _image(out / row["image"])
        mask, size = _shape_mask(pixels), pixels.shape[0]
        x, y = _centre(mask)
        seen = {"colour": _colour(pixels, mask), "horizontal": "left" if x < size / 2 else "right",
                "vertical": "top" if y < size / 2 else "bottom"}
        assert seen[row["qtype"]] == row["answer"], row
    assert {row["qtype"] for row in _rows(out)} == {"colour", "horizontal", "vertical"}
    assert any(not row["question"].isascii() for row in _rows(out))  # French wordings too


def test_photo_qa_answers_match_the_pixels(tmp_path: Path) -> None:
    """Colour, side and number of the saturated shapes on a grey photograph; the shape is
    told by how much of its bounding box it fills (square 1, circle pi/4, triangle 1/2)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    out = _generate("photo_qa", tmp_path, n_train=1)
    generate_probe("photo_qa", out, 1, 80)
    for row in _rows(out):
        pixels = _image(out / row["image"])
        mask = _shape_mask(pixels)
        labels, count = ndimage.label(mask)
        box = ndimage.find_objects(labels)[0]
        fill = (labels[box] == 1).mean()
        shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
        x = _centre(mask)[0]
        seen = {"colour": _colour(pixels, mask), "side": "left" if x < PHOTO_SIZE / 2 else "right",
                "count": ("one", "two", "three")[count - 1], "shape": shape}
        assert seen[row["qtype"]] == row["answer"], row
    assert {row["qtype"] for row in _rows(out)} == {"colour", "shape", "side", "count"}
    train = {row["image"] for row in _rows(out, "train")}
    assert pixels.shape == (PHOTO_SIZE, PHOTO_SIZE, 3)
    assert not train & {row["image"] for row in _rows(out)}


def test_image_caption_matches_the_pixels(generated: dict[str, Path]) -> None:
    for row in _rows(generated["image_caption"]):
        pixels = _image(generated["image_caption"] / row["image"])
        mask = _shape_mask(pixels)
        side = "left" if _centre(mask)[0] < pixels.shape[1] / 2 else "right"
        kind = row["caption"].split()[2]
        assert kind in {"circle", "square", "triangle"}
        assert row["caption"] == f"a {_colour(pixels, mask)} {kind} on the {side}", row


def test_image_count_matches_the_shapes(generated: dict[str, Path]) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    for row in _rows(generated["image_count"]):
        _, shapes = ndimage.label(_shape_mask(_image(generated["image_count"] / row["image"])))
        assert str(shapes) == row["count"], row


def test_video_qa_and_caption_match_the_motion(generated: dict[str, Path]) -> None:
    for row in _rows(generated["video_qa"]):
        frames = _video(generated["video_qa"] / row["video"])
        seen = {"direction": _direction(frames),
                "colour": _colour(frames[0], _shape_mask(frames[0]))}
        assert seen[row["qtype"]] == row["answer"], row
    for row in _rows(generated["video_caption"]):
        frames = _video(generated["video_caption"] / row["video"])
        colour = _colour(frames[0], _shape_mask(frames[0]))
        assert row["caption"] == f"the {colour} dot moves {_direction(frames)}"


def test_video_count_matches_the_flashes(generated: dict[str, Path]) -> None:
    for row in _rows(generated["video_count"]):
        lit = _shape_mask(_video(generated["video_count"] / row["video"])).sum(axis=(1, 2)) > 20
        onsets = np.flatnonzero(lit[1:] & ~lit[:-1]).size + int(lit[0])
        assert str(onsets) == row["count"], row


def test_audio_order_and_caption_match_the_tones(generated: dict[str, Path]) -> None:
    for row in _rows(generated["audio_order"]):
        tones = _pitches(*_audio(generated["audio_order"] / row["audio"]))
        assert tones == (["low", "high"] if row["label"] == "rising" else ["high", "low"]), row
    for row in _rows(generated["audio_caption"]):
        tones = _pitches(*_audio(generated["audio_caption"] / row["audio"]))
        assert " ".join(tones) == row["caption"], row


def test_audio_qa_answers_match_the_tone(tmp_path: Path) -> None:
    out = _generate("audio_qa", tmp_path, n_train=1)
    for row in _rows(out):
        wave, rate = _audio(out / row["audio"])
        spectrum = np.abs(np.fft.rfft(wave))
        freq = np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]
        seen = {"pitch": "low" if freq < 1000 else "high",
                "loudness": "loud" if np.abs(wave).max() > 0.3 else "quiet",
                "position": "early" if np.abs(wave).argmax() < len(wave) / 2 else "late"}
        assert seen[row["qtype"]] == row["answer"], row


def test_text_order_agent_is_the_subject(generated: dict[str, Path]) -> None:
    animals = {"cat", "dog", "fox", "bird", "horse", "mouse"}
    for row in _rows(generated["text_order"], "train"):
        named = [word for word in row["sentence"].split() if word in animals]
        assert len(set(named)) == 2 and named[0] == row["agent"], row


def test_text_negation_flips_the_polarity(tmp_path: Path) -> None:
    generate_probe("text_negation", tmp_path, 1, 200)
    positive = ("good", "great", "fun", "liked", "like", "bon", "génial", "amusant", "aimé",
                "好", "有趣", "精彩", "喜欢")
    rows = _rows(tmp_path)
    for row in rows:
        review = row["review"]
        chinese = " " not in review  # Chinese reviews are written without spaces

        def has(token: str, review: str = review, chinese: bool = chinese) -> bool:
            return token in review if chinese else token in review.split()

        negated = has("不") or has("not") or has("pas")
        polar = any(has(token) for token in positive)
        assert row["sentiment"] == ("positive" if polar != negated else "negative"), row
    reviews = " ".join(row["review"] for row in rows)
    assert " not " in reviews and " pas " in reviews and "不" in reviews


def test_text_translate_orders_and_agrees() -> None:
    assert _french("the big red circle") == "le grand cercle rouge"
    assert _french("the small green box") == "la petite boîte verte"
    assert _french("a big blue star") == "une grande étoile bleue"
    assert _french("a small black book") == "un petit livre noir"


def test_text_translate_rows_follow_the_grammar(generated: dict[str, Path]) -> None:
    feminine = {"box", "star", "house", "car"}
    for row in _rows(generated["text_translate"], "train"):
        article, size, colour, noun = row["english"].split()
        words = row["french"].split()
        assert len(words) == 4 and words[0] in {"le", "la", "un", "une"}
        female = noun in feminine
        assert (words[0] in {"la", "une"}) == female, row
        assert words[1].endswith("e") == female, row  # grande/petite vs grand/petit
