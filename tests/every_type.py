"""A tiny table and model with every input type and every output type, for the tests that must
cover them all (the server's OpenAPI fuzzing, export, the web page)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import draw_shape
from media import moving_square, tone, write_audio, write_video

COLOURS, SHAPES = ("red", "green", "blue"), ("circle", "square", "triangle")
BRANDS = ("acme", "globex", "initech", "umbrella")


def every_type_rows(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` rows: image, text, audio, video, number, category and binary inputs; number,
    binary, set, category and text targets (blank cells included)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour, shape = COLOURS[i % 3], SHAPES[(i // 3) % 3]
        image, sound, clip = f"img/{i:03d}.png", f"snd/{i:03d}.wav", f"vid/{i:03d}.mp4"
        (folder / "img").mkdir(parents=True, exist_ok=True)
        draw_shape(colour, shape, rng).save(folder / image)
        write_audio(folder / sound, tone(300 + 100 * (i % 3), 0.3, 8000), 8000)
        write_video(folder / clip, moving_square(4, 16, 16, 1 if i % 2 else -1))
        weight = round(float(rng.uniform(0.5, 9.0)), 2)
        brand = BRANDS[i % 4]
        handmade = bool(i % 5 == 0)
        rows.append({
            "image": image, "note": f"a {colour} thing", "sound": sound, "clip": clip,
            "weight": "" if i % 11 == 3 else weight, "brand": brand,
            "handmade": "yes" if handmade else "no",
            "price": round(10 * (1 + SHAPES.index(shape)) + 2 * weight, 2),
            "heavy": "yes" if weight > 5 else "no",
            "tags": " ".join(t for t, on in (("warm", colour == "red"),
                                             ("craft", handmade), ("big", weight > 5)) if on),
            "shape": shape, "caption": f"{colour} {shape}"})
    return rows


EVERY_TYPE_CONFIG = {
    "inputs": [
        # the file inputs may be missing (modality dropout), so a request may leave them out
        {"name": "image", "type": "image", "preprocess": {"size": 32}, "modality_dropout": 0.1,
         "encoder": {"type": "cnn", "channels": [8, 8], "pool": "mean", "dim": 16}},
        {"name": "note", "type": "text", "encoder": {"type": "bow", "embedding_dim": 8}},
        {"name": "sound", "type": "audio", "preprocess": {"sample_rate": 8000,
                                                          "max_seconds": 1.0, "n_mels": 16},
         "modality_dropout": 0.1,
         "encoder": {"type": "audio_cnn", "channels": [8], "dim": 16}},
        {"name": "clip", "type": "video", "preprocess": {"size": 16, "frames": 4},
         "modality_dropout": 0.1,
         "encoder": {"type": "frame_cnn", "channels": [8], "dim": 16}},
        {"name": "weight", "type": "number"},
        {"name": "brand", "type": "category"},
        {"name": "handmade", "type": "binary"},
    ],
    "fusion": {"type": "concat", "hidden": [32]},
    "outputs": [
        {"name": "price", "type": "number", "predictor": {"type": "linear"}},
        {"name": "heavy", "type": "binary", "threshold": "auto",
         "predictor": {"type": "logistic"}, "use": "head"},
        {"name": "tags", "type": "set"},
        {"name": "shape", "type": "category", "calibrate": True,
         "predictor": {"type": "random_forest", "n_estimators": 20}},
        {"name": "caption", "type": "text"},
    ],
    "training": {"epochs": 2, "batch_size": 16},
}


def write_every_type(folder: Path, n: int = 24, seed: int = 0) -> Path:
    """The table as CSV (``table.csv``) and JSONL (``table.jsonl``, with JSON numbers, booleans
    and a list for tags) in ``folder``; returns the CSV path."""
    from conftest import write_table

    folder.mkdir(parents=True, exist_ok=True)
    rows = every_type_rows(folder, n, seed)
    write_table(folder / "table.csv", rows)
    with (folder / "table.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({**row, "weight": row["weight"] if row["weight"] != "" else None,
                                "handmade": row["handmade"] == "yes",
                                "tags": row["tags"].split()}) + "\n")
    return folder / "table.csv"
