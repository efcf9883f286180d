"""How each probe task draws one row: its media (PNG, MP4, WAV) and its CSV cells.

Every row maker takes ``(rng, out_dir, stem)``, writes its media file at ``stem`` plus a suffix
under ``out_dir`` and returns the row; ``probes.py`` registers them and writes the tables. The
module constants hold every size, rate, range and wording, so a task's difficulty is tuned in
one place.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

from ..errors import require

T = TypeVar("T")
Row = dict[str, str]
RowMaker = Callable[[np.random.Generator, Path, str], Row]
"""Draws one row: ``(rng, out_dir, stem)`` -> the row, its media written at ``stem + suffix``."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 190, 50), "blue": (40, 70, 235), "yellow": (235, 215, 30)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[int, ...] = (40, 56, 72)
"""Side of an image or video frame, in pixels (even, as yuv420p needs)."""
FPS = 10
VIDEO_FRAMES: tuple[int, ...] = (8, 12, 16, 20)
FLASH_FRAMES: tuple[int, ...] = (12, 16, 20)
FLASH_LENGTH = 2
"""Frames a flash lasts in ``video_count``; flashes are at least two dark frames apart."""
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SAMPLE_RATES: tuple[int, ...] = (8000, 16000, 22050)
CLIP_SECONDS = (1.0, 2.0)
TONE_SECONDS = (0.15, 0.3)
FADE_SECONDS = 0.01
PITCH_HZ = {"order": {"low": (300.0, 500.0), "high": (1200.0, 2000.0)},
            "qa": {"low": (250.0, 450.0), "high": (1500.0, 2500.0)}}
PEAKS = {"loud": (0.7, 0.9), "quiet": (0.04, 0.06)}
"""Peak amplitude ranges in ``audio_qa``: quiet is about 24 dB below loud."""
QA_NOISE_STD = 0.003
"""Absolute noise level of every ``audio_qa`` clip, so loudness can be measured."""
NOISE_DB = 30.0
"""Noise level below the tone RMS in ``audio_order`` and ``audio_caption``."""

_GAP_SECONDS = 0.1  # shortest silence between two tones
_EDGE_SECONDS = 0.05  # shortest silence at either end of a clip
_BIT_RATE = 1_000_000  # far above what these clips need, so colours survive encoding

QUESTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "image_qa": {
        "colour": ("what colour is the shape?", "which colour is it?",
                   "what color is the object?", "de quelle couleur est la forme ?",
                   "quelle est la couleur de la forme ?"),
        "horizontal": ("is the shape on the left or the right?", "which side is the shape on?",
                       "left or right?", "la forme est-elle à gauche ou à droite ?",
                       "de quel côté est la forme ?"),
        "vertical": ("is the shape at the top or the bottom?", "is it near the top or the bottom?",
                     "top or bottom?", "la forme est-elle en haut ou en bas ?")},
    "video_qa": {
        "direction": ("which way does the dot move?", "where is the dot going?",
                      "in which direction does the dot travel?",
                      "dans quelle direction va le point ?", "où va le point ?"),
        "colour": ("what colour is the dot?", "which colour is the moving dot?",
                   "de quelle couleur est le point ?")},
    "photo_qa": {
        "colour": ("what colour is the shape?", "which colour are the shapes?",
                   "what color is it?", "de quelle couleur est la forme ?"),
        "shape": ("what shape is it?", "which shape do you see?", "circle, square or triangle?",
                  "quelle est la forme ?"),
        "side": ("is it on the left or the right?", "which side is the shape on?",
                 "left or right?", "de quel côté est la forme ?"),
        "count": ("how many shapes are there?", "how many?", "count the shapes",
                  "combien de formes ?")},
    "audio_qa": {
        "pitch": ("is the tone high or low?", "is the pitch high or low?",
                  "le son est-il aigu ou grave ?"),
        "loudness": ("is it loud or quiet?", "how loud is the tone?",
                     "le son est-il fort ou faible ?"),
        "position": ("does the tone come early or late?", "when does the tone play?",
                     "le son arrive-t-il tôt ou tard ?")},
}
"""Question wordings per probe and question type (the ``qtype`` column)."""

ANIMALS = ("cat", "dog", "fox", "bird", "horse", "mouse")
VERBS = ("chased", "bit", "saw", "followed", "pushed", "watched")
ORDER_TEMPLATES = ("the {a} {v} the {b}", "yesterday the {a} {v} the {b}",
                   "the {a} {v} the {b} in the garden", "this morning the {a} {v} the {b}",
                   "the old {a} {v} the young {b}")
REVIEW_OBJECTS = {"en": ("film", "book", "song", "game", "meal", "show"),
                  "fr": ("film", "livre", "jeu", "repas", "spectacle", "disque"),
                  "zh": ("部电影", "本书", "首歌", "个游戏", "顿饭", "个节目")}
REVIEW_ADJECTIVES = {  # language -> polarity -> adjectives
    "en": {True: ("good", "great", "fun"), False: ("bad", "boring", "awful")},
    "fr": {True: ("bon", "génial", "amusant"), False: ("mauvais", "ennuyeux", "nul")},
    "zh": {True: ("好", "有趣", "精彩"), False: ("差", "无聊", "糟糕")}}
REVIEW_TEMPLATES = {  # language -> (form, negated) -> template; verb forms are all positive
    "en": {("adj", False): "this {o} is {j}", ("adj", True): "this {o} is not {j}",
           ("verb", False): "i liked this {o}", ("verb", True): "i did not like this {o}"},
    "fr": {("adj", False): "ce {o} est {j}", ("adj", True): "ce {o} n'est pas {j}",
           ("verb", False): "j'ai aimé ce {o}", ("verb", True): "je n'ai pas aimé ce {o}"},
    "zh": {("adj", False): "这{o}很{j}", ("adj", True): "这{o}不{j}",
           ("verb", False): "我喜欢这{o}", ("verb", True): "我不喜欢这{o}"}}
FRENCH_NOUNS = {"circle": ("cercle", "m"), "square": ("carré", "m"), "box": ("boîte", "f"),
                "star": ("étoile", "f"), "house": ("maison", "f"), "car": ("voiture", "f"),
                "book": ("livre", "m")}
FRENCH_WORDS = {"the": ("le", "la"), "a": ("un", "une"), "big": ("grand", "grande"),
                "small": ("petit", "petite"), "red": ("rouge", "rouge"),
                "green": ("vert", "verte"), "blue": ("bleu", "bleue"), "black": ("noir", "noire")}
"""Masculine and feminine French forms of each English article and adjective."""


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def _ask(rng: np.random.Generator, probe: str) -> tuple[str, str]:
    """A question type of ``probe`` and one of its wordings, both uniformly."""
    qtype = _pick(rng, list(QUESTIONS[probe]))
    return qtype, _pick(rng, QUESTIONS[probe][qtype])


def _media(out_dir: Path, stem: str, suffix: str) -> tuple[Path, str]:
    """The file to write and the path the CSV names, creating the media folder."""
    relative = f"{stem}.{suffix}"
    path = out_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, relative


# Images.

def _canvas(rng: np.random.Generator) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A square image of a random side from ``SIZES``, dark or light grey."""
    size = _pick(rng, SIZES)
    grey = int(rng.integers(15, 70) if rng.random() < 0.5 else rng.integers(170, 235))
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    return image, ImageDraw.Draw(image)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float,
                colour: str) -> None:
    """Fill a circle, square or (upward) triangle of half-side ``r`` centred at ``(x, y)``."""
    box, fill = (x - r, y - r, x + r, y + r), COLOURS[colour]
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)


def _outer_third(rng: np.random.Generator, size: int, r: float, near: bool) -> float:
    """A centre coordinate in the first (``near``) or last third, ``r + 1`` from the edge."""
    centre = rng.uniform(r + 1, size / 3)
    return centre if near else size - centre


def _one_shape(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """Write an image of one shape in a corner region; return its facts and the path."""
    image, draw = _canvas(rng)
    size = image.width
    facts = {"colour": _pick(rng, list(COLOURS)), "kind": _pick(rng, SHAPES),
             "horizontal": _pick(rng, ("left", "right")),
             "vertical": _pick(rng, ("top", "bottom"))}
    r = rng.uniform(size / 9, size / 7)
    x = _outer_third(rng, size, r, facts["horizontal"] == "left")
    y = _outer_third(rng, size, r, facts["vertical"] == "top")
    _draw_shape(draw, facts["kind"], x, y, r, facts["colour"])
    return {**facts, "image": _save_png(image, out_dir, stem)}


def _save_png(image: Image.Image, out_dir: Path, stem: str) -> str:
    """Write ``image`` as PNG; return its path relative to ``out_dir``."""
    path, relative = _media(out_dir, stem, "png")
    image.save(path, format="PNG")
    return relative


def image_qa_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """One shape; ask its colour, its side or its height."""
    facts = _one_shape(rng, out_dir, stem)
    qtype, question = _ask(rng, "image_qa")
    return {"image": facts["image"], "question": question, "answer": facts[qtype],
            "qtype": qtype}


def image_count_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """1-4 shapes, each inside its own quadrant so none overlap."""
    image, draw = _canvas(rng)
    half, count = image.width / 2, int(rng.integers(1, 5))
    for quadrant in rng.choice(4, size=count, replace=False).tolist():
        r = rng.uniform(half / 5, half / 3.5)
        x, y = rng.uniform(r + 1, half - r - 1, size=2) + half * np.array(divmod(quadrant, 2))
        _draw_shape(draw, _pick(rng, SHAPES), x, y, r, _pick(rng, list(COLOURS)))
    return {"image": _save_png(image, out_dir, stem), "count": str(count)}


def image_caption_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """One shape, described by colour, kind and side."""
    facts = _one_shape(rng, out_dir, stem)
    caption = f"a {facts['colour']} {facts['kind']} on the {facts['horizontal']}"
    return {"image": facts["image"], "caption": caption}


PHOTO_SIZE = 64
"""Side of a ``photo_qa`` image: small, as the issue-28 table that found the gaps."""
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three")


@functools.cache
def _grey_photos(split: str) -> tuple[np.ndarray, ...]:
    """The photo-views photographs in grey, each cut to ``split``'s region (test backgrounds
    are pixels training never shows)."""
    from .photo_views import PHOTOS, load_photo, split_region

    regions = []
    for photo in PHOTOS:
        image = load_photo(photo).convert("L")
        regions.append(np.asarray(image.crop(split_region(*image.size, photo.test_side, split))))
    return tuple(regions)


def _photo_background(rng: np.random.Generator, split: str) -> Image.Image:
    """A ``PHOTO_SIZE`` square grey view of a random photograph at a random scale and place,
    its contrast lowered so that the shapes on it stay visible."""
    region = _pick(rng, _grey_photos(split))
    h, w = region.shape
    side = int(rng.uniform(0.25, 0.6) * min(h, w))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(region[y:y + side, x:x + side]).resize(
        (PHOTO_SIZE, PHOTO_SIZE), Image.Resampling.BILINEAR)
    grey = np.asarray(crop, dtype=np.float32)
    grey = 128 + (grey - grey.mean()) * rng.uniform(0.5, 0.9)
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")


def _place(rng: np.random.Generator, count: int, r: float, left: bool) -> list[np.ndarray]:
    """``count`` centres in the left or right half whose ``2r``-wide boxes are at least two
    pixels apart (so no two shapes touch, squares included)."""
    half = PHOTO_SIZE / 2
    x0 = 0.0 if left else half
    while True:
        xs = rng.uniform(x0 + r + 1, x0 + half - r - 1, size=count)
        ys = rng.uniform(r + 1, PHOTO_SIZE - r - 1, size=count)
        centres = [np.array(c) for c in zip(xs, ys, strict=True)]
        if all(np.abs(a - b).max() >= 2 * r + 2
               for i, a in enumerate(centres) for b in centres[i + 1:]):
            return centres


def photo_qa_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """1-3 shapes of one colour and kind, all in one half of a grey photograph; ask their
    colour, kind, side or number (a one-word answer)."""
    split = Path(stem).name.split("_")[0]
    image = _photo_background(rng, split)
    draw = ImageDraw.Draw(image)
    facts = {"colour": _pick(rng, list(COLOURS)), "shape": _pick(rng, SHAPES),
             "side": _pick(rng, ("left", "right")),
             "count": _pick(rng, COUNT_WORDS)}
    r = rng.uniform(PHOTO_SIZE / 12, PHOTO_SIZE / 8)
    for x, y in _place(rng, COUNT_WORDS.index(facts["count"]) + 1, r, facts["side"] == "left"):
        _draw_shape(draw, facts["shape"], x, y, r, facts["colour"])
    qtype, question = _ask(rng, "photo_qa")
    return {"image": _save_png(image, out_dir, stem), "question": question,
            "answer": facts[qtype], "qtype": qtype}


# Videos.

def _blank_video(rng: np.random.Generator, frames: Sequence[int]) -> np.ndarray:
    """uint8 ``(F, S, S, 3)`` dark frames, F from ``frames`` and S from ``SIZES``."""
    size, grey = _pick(rng, SIZES), int(rng.integers(10, 50))
    return np.full((_pick(rng, frames), size, size, 3), grey, np.uint8)


def _save_mp4(video: np.ndarray, out_dir: Path, stem: str) -> str:
    """Encode uint8 RGB frames as MP4 (one encoder thread, so bytes are reproducible)."""
    av = require("av", "video", "generating video probes")
    path, relative = _media(out_dir, stem, "mp4")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt, stream.bit_rate, stream.thread_count = "yuv420p", _BIT_RATE, 1
        for pixels in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return relative


def _dot_path(rng: np.random.Generator, size: int, frames: int, direction: str) -> np.ndarray:
    """``(frames, 2)`` centres ``(x, y)`` crossing the frame from near one side to the other."""
    r, (dx, dy) = size / 8, DIRECTIONS[direction]
    near, far = rng.uniform(r + 1, r + 1 + size / 8), size - rng.uniform(r + 1, r + 1 + size / 8)
    along = np.linspace(near, far, frames) if dx + dy > 0 else np.linspace(far, near, frames)
    across = np.full(frames, rng.uniform(r + 1, size - r - 1))
    return np.stack([along, across] if dx else [across, along], axis=1)


def _moving_dot(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """Write a clip of a dot moving in a straight line; return its facts and the path."""
    video = _blank_video(rng, VIDEO_FRAMES)
    frames, size = video.shape[:2]
    facts = {"colour": _pick(rng, list(COLOURS)), "direction": _pick(rng, list(DIRECTIONS))}
    yy, xx = np.mgrid[0:size, 0:size]
    for frame, (x, y) in zip(video, _dot_path(rng, size, frames, facts["direction"]),
                             strict=True):
        frame[(xx - x) ** 2 + (yy - y) ** 2 <= (size / 8) ** 2] = COLOURS[facts["colour"]]
    return {**facts, "video": _save_mp4(video, out_dir, stem)}


def video_qa_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """A moving dot; ask its direction or its colour."""
    facts = _moving_dot(rng, out_dir, stem)
    qtype, question = _ask(rng, "video_qa")
    return {"video": facts["video"], "question": question, "answer": facts[qtype],
            "qtype": qtype}


def _flash_onsets(rng: np.random.Generator, frames: int, count: int) -> list[int]:
    """``count`` first frames of flashes, with at least two dark frames between flashes."""
    while True:
        onsets = np.sort(rng.choice(frames - FLASH_LENGTH + 1, size=count, replace=False))
        if np.all(np.diff(onsets) >= FLASH_LENGTH + 2):
            return onsets.tolist()


def video_count_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """A square in a fixed place that flashes 1-3 times."""
    video = _blank_video(rng, FLASH_FRAMES)
    frames, size = video.shape[:2]
    count, side = int(rng.integers(1, 4)), size // 5
    x, y = rng.integers(1, size - side, size=2).tolist()
    colour = COLOURS[_pick(rng, list(COLOURS))]
    for onset in _flash_onsets(rng, frames, count):
        video[onset: onset + FLASH_LENGTH, y: y + side, x: x + side] = colour
    return {"video": _save_mp4(video, out_dir, stem), "count": str(count)}


def video_caption_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """A moving dot, described by colour and direction."""
    facts = _moving_dot(rng, out_dir, stem)
    return {"video": facts["video"],
            "caption": f"the {facts['colour']} dot moves {facts['direction']}"}


# Audio.

def _tone(freq: float, seconds: float, rate: int, peak: float) -> np.ndarray:
    """A sine tone with raised-cosine fades of ``FADE_SECONDS`` at both ends."""
    wave = peak * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)
    fade = round(FADE_SECONDS * rate)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    wave[:fade] *= ramp
    wave[-fade:] *= ramp[::-1]
    return wave


def _clip_format(rng: np.random.Generator) -> tuple[int, float]:
    """A sample rate from ``SAMPLE_RATES`` and a duration in ``CLIP_SECONDS``."""
    return _pick(rng, SAMPLE_RATES), float(rng.uniform(*CLIP_SECONDS))


def _save_wav(rng: np.random.Generator, out_dir: Path, stem: str, rate: int, seconds: float,
              tones: list[tuple[float, np.ndarray]], noise_std: float) -> str:
    """Mix ``(start seconds, wave)`` tones into white noise; write 16-bit mono WAV."""
    soundfile = require("soundfile", "audio", "generating audio probes")
    clip = rng.normal(0.0, noise_std, round(seconds * rate))
    for start, wave in tones:
        begin = round(start * rate)
        clip[begin: begin + len(wave)] += wave
    path, relative = _media(out_dir, stem, "wav")
    buffer = io.BytesIO()  # writing a path fsyncs every file, which is ~10x slower
    soundfile.write(buffer, np.clip(clip, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")
    path.write_bytes(buffer.getvalue())
    return relative


def _beeps(rng: np.random.Generator, out_dir: Path, stem: str, pitches: list[str]) -> str:
    """Write a clip of low/high beeps in order, separated by gaps; return its path."""
    rate, seconds = _clip_format(rng)
    n, peak = len(pitches), rng.uniform(0.3, 0.8)
    budget = seconds - 2 * _EDGE_SECONDS - (n - 1) * _GAP_SECONDS
    durations = rng.uniform(TONE_SECONDS[0], min(TONE_SECONDS[1], budget / n), size=n)
    slack = rng.dirichlet(np.ones(n + 1)) * (budget - durations.sum())
    start, tones = _EDGE_SECONDS + slack[0], []
    for pitch, duration, rest in zip(pitches, durations, slack[1:], strict=True):
        freq = rng.uniform(*PITCH_HZ["order"][pitch])
        tones.append((start, _tone(freq, duration, rate, peak)))
        start += duration + _GAP_SECONDS + rest
    noise_std = peak / np.sqrt(2) * 10 ** (-NOISE_DB / 20)
    return _save_wav(rng, out_dir, stem, rate, seconds, tones, noise_std)


def audio_order_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """A low and a high tone: rising if the low one comes first."""
    label = _pick(rng, ("rising", "falling"))
    pitches = ["low", "high"] if label == "rising" else ["high", "low"]
    return {"audio": _beeps(rng, out_dir, stem, pitches), "label": label}


def audio_qa_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """One tone inside one half of the clip; ask its pitch, loudness or half."""
    facts = {"pitch": _pick(rng, ("low", "high")), "loudness": _pick(rng, ("loud", "quiet")),
             "position": _pick(rng, ("early", "late"))}
    rate, seconds = _clip_format(rng)
    duration, half = rng.uniform(*TONE_SECONDS), seconds / 2
    start = rng.uniform(_EDGE_SECONDS, half - duration - _EDGE_SECONDS)
    start += half if facts["position"] == "late" else 0.0
    wave = _tone(rng.uniform(*PITCH_HZ["qa"][facts["pitch"]]), duration, rate,
                 rng.uniform(*PEAKS[facts["loudness"]]))
    audio = _save_wav(rng, out_dir, stem, rate, seconds, [(start, wave)], QA_NOISE_STD)
    qtype, question = _ask(rng, "audio_qa")
    return {"audio": audio, "question": question, "answer": facts[qtype], "qtype": qtype}


def audio_caption_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """2 or 3 beeps, each low or high, captioned in order."""
    pitches = [_pick(rng, ("low", "high")) for _ in range(int(rng.integers(2, 4)))]
    return {"audio": _beeps(rng, out_dir, stem, pitches), "caption": " ".join(pitches)}


# Text.

def text_order_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """A sentence such as "the cat chased the dog"; the agent is the first-named animal."""
    a, b = rng.choice(len(ANIMALS), size=2, replace=False).tolist()
    sentence = _pick(rng, ORDER_TEMPLATES).format(a=ANIMALS[a], v=_pick(rng, VERBS),
                                                  b=ANIMALS[b])
    return {"sentence": sentence, "agent": ANIMALS[a]}


def text_negation_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """A review whose sentiment is the adjective's polarity, flipped by a negation."""
    positive, language = bool(rng.integers(2)), _pick(rng, list(REVIEW_TEMPLATES))
    form = _pick(rng, ("adj", "verb"))
    negated = bool(rng.integers(2)) if form == "adj" else not positive
    adjective = _pick(rng, REVIEW_ADJECTIVES[language][positive != negated])
    review = REVIEW_TEMPLATES[language][form, negated].format(
        o=_pick(rng, REVIEW_OBJECTS[language]), j=adjective)
    return {"review": review, "sentiment": "positive" if positive else "negative"}


def _french(english: str) -> str:
    """Translate ``"the|a SIZE COLOUR NOUN"``: article, size, noun, colour, all agreeing."""
    article, size, colour, noun = english.split()
    french, gender = FRENCH_NOUNS[noun]
    article, size, colour = (FRENCH_WORDS[word][gender == "f"] for word in (article, size, colour))
    return f"{article} {size} {french} {colour}"


def text_translate_row(rng: np.random.Generator, out_dir: Path, stem: str) -> Row:
    """An English noun phrase and its French translation."""
    english = " ".join((_pick(rng, ("the", "a")), _pick(rng, ("big", "small")),
                        _pick(rng, ("red", "green", "blue", "black")),
                        _pick(rng, list(FRENCH_NOUNS))))
    return {"english": english, "french": _french(english)}
