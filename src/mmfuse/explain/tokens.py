"""What each token of an input stands for: a place in the image, a time in the clip, a word.

One describer per modality (the encoder's ``modality``), each returning one dict per token:

- image: ``{"position": [x, y]}``, the token's centre as fractions of the image's width and
  height (0..1, x from the left, y from the top). ``cnn`` gives its receptive-field centres
  (``token_centres``); other grids (EfficientNet, ViT patches) are taken as evenly spaced
  cells (``hf_image``: its patch grid); the class token before the patches gets
  ``{"token": "[class]"}``, register tokens ``{"token": "[register]"}``. A centre crop
  is mapped back to the uncropped image.
- text: ``{"token": word}``, the tokenizer's token (a byte-level BPE token as the text it
  stands for: " the", not "Ġthe").
- audio: ``{"time": t}``, the centre of the token's span in seconds from the clip's start.
- video: ``{"time": t}``, the time its frame was sampled at.
- number, category, binary (one token): ``{"value": cell}``, the row's cell as the table wrote
  it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..data.table import resolve_file
from ..errors import MmfuseError
from ..modalities.image import pair
from ..pipeline import EncodedTable, Pipeline


def image_positions(encoder, options, count: int, name: str) -> list[list[float] | None]:
    """(x, y) fractions per token (None for a class or register token, which come first)."""
    if hasattr(encoder, "token_centres"):
        centres = encoder.token_centres().tolist()
    else:
        grid = encoder.grid
        if grid is None:  # a square grid, after at most one class token
            side = next((math.isqrt(count - k) for k in (0, 1)
                         if math.isqrt(count - k) ** 2 == count - k), None)
            if side is None:
                raise MmfuseError(f"explain: the {count} tokens of input {name!r} are not a "
                                  "square grid; its encoder must give its grid size (grid)")
            grid = (side, side)
        h, w = grid
        if count < h * w:
            raise MmfuseError(f"explain: input {name!r} has {count} tokens, fewer than its "
                              f"{h}x{w} grid of patches")
        ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        centres = [None] * (count - h * w) + np.stack([xs, ys], -1).reshape(-1, 2).tolist()
    if getattr(options, "crop", None) is not None:  # back to the uncropped (resized) image
        (height, width), (ch, cw) = pair(options.size), pair(options.crop)
        left, top = (width - cw) // 2, (height - ch) // 2
        centres = [None if c is None else [(left + c[0] * cw) / width, (top + c[1] * ch) / height]
                   for c in centres]
    return centres


def _image(pipeline: Pipeline, data: EncodedTable, row: int, name: str, inputs: dict,
           count: int) -> list[dict]:
    positions = image_positions(pipeline.model.encoders[name], pipeline.inputs[name].options,
                                count, name)
    special = ["[class]"] + ["[register]"] * len(positions)
    return [{"token": special[i]} if p is None else {"position": [round(v, 4) for v in p]}
            for i, p in enumerate(positions)]


def _text(pipeline: Pipeline, data: EncodedTable, row: int, name: str, inputs: dict,
          count: int) -> list[dict]:
    from tokenizers import decoders

    tokenizer = pipeline.inputs[name].tokenizer
    ids = inputs[name]["ids"][0].tolist()
    if isinstance(tokenizer.decoder, decoders.ByteLevel):  # an LM's BPE: "Ġthe" is " the"
        return [{"token": tokenizer.decode([int(i)])} for i in ids[:count]]
    return [{"token": tokenizer.id_to_token(int(i)) or "[UNK]"} for i in ids[:count]]


def _audio(pipeline: Pipeline, data: EncodedTable, row: int, name: str, inputs: dict,
           count: int) -> list[dict]:
    frames = inputs[name]["features"].shape[-1]  # spectrogram frames of the padded item
    hop = pipeline.inputs[name].options.hop_ms / 1000
    per_token = frames / max(1, count)
    return [{"time": round((i + 0.5) * per_token * hop, 4)} for i in range(count)]


def _video(pipeline: Pipeline, data: EncodedTable, row: int, name: str, inputs: dict,
           count: int) -> list[dict]:
    from ..modalities.video import read_clip

    prep = pipeline.inputs[name]
    value = data.table.rows[row].get(prep.column)
    times = read_clip(resolve_file(value, data.table, row, prep.column), prep.options)[1]
    return [{"time": round(times[i], 4) if i < len(times) else None} for i in range(count)]


def _value(pipeline: Pipeline, data: EncodedTable, row: int, name: str, inputs: dict,
           count: int) -> list[dict]:
    value = data.table.rows[row].get(pipeline.inputs[name].column)
    return [{"value": value} for _ in range(count)]


DESCRIBERS: dict[str, Callable[..., list[dict]]] = {
    "image": _image, "text": _text, "audio": _audio, "video": _video, "number": _value,
    "category": _value, "binary": _value}


def describe_tokens(pipeline: Pipeline, data: EncodedTable, row: int, name: str,
                    inputs: dict, count: int) -> list[dict]:
    """One dict per token of input ``name`` in ``row`` (see the module docstring)."""
    modality = pipeline.model.encoders[name].modality
    # a type without a describer of its own (one registered outside mmfuse) shows its cell
    return DESCRIBERS.get(modality, _value)(pipeline, data, row, name, inputs, count)


def heat_points(tokens: list[dict], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens that have a position: ``[K, 2]`` positions and their values."""
    keep = [i for i, t in enumerate(tokens) if "position" in t]
    return (np.array([tokens[i]["position"] for i in keep], dtype=np.float64).reshape(-1, 2),
            np.asarray(values, dtype=np.float64)[keep])

