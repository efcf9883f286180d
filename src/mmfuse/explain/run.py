"""``mmfuse explain``: modality importance over a table and per-row token attributions.

``method`` is ``attention`` when the fusion's attention explained an input of the row (the
other inputs then get integrated gradients; ``methods`` says which input got which), and
``none`` for a row with nothing to attribute (every input it has is missing, or the attended
one is, with ``--method attention``).

The JSON it prints (``--json``)::

    {"modality_importance": {OUTPUT: {INPUT: {"drop": d, "permute": p}}},
     "metric": {OUTPUT: "accuracy" | "bleu"}, "baseline": {OUTPUT: value},
     "rows": [{"row": i, "method": "integrated_gradients" | "attention",
               "methods": {INPUT: "integrated_gradients" | "attention"},
               "outputs": {OUTPUT: {"prediction": ...,
                                    "tokens": {INPUT: [{"position": [x, y] | "time": t |
                                                        "token": w, "importance": v}, ...]},
                                    "heatmaps": {INPUT: "PATH.png"}}}}]}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.table import as_table, resolve_file
from ..errors import MmfuseError
from .attribution import METHODS, attribute_row, has_attention
from .heatmap import draw_frame_strip, draw_heatmap
from .importance import modality_importance
from .tokens import describe_tokens, heat_points

if TYPE_CHECKING:
    from rich.console import Console

    from ..api import Model

DEFAULT_ROWS = 5


def row_numbers(text: str | None) -> list[int] | None:
    """``"0,5,9"`` -> ``[0, 5, 9]``; None -> None (the default rows)."""
    if text is None:
        return None
    try:
        rows = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MmfuseError(f"--rows {text!r}: expected row numbers separated by commas, "
                          "e.g. --rows 0,5,9") from None
    if not rows or min(rows) < 0:
        raise MmfuseError(f"--rows {text!r}: expected row numbers from 0, e.g. --rows 0,5,9")
    return rows


def explain_run(model: Model, data, rows: list[int] | None, out_dir: Path | None,
                data_root=None, method: str | None = None, steps: int = 32,
                importance: bool = True) -> dict:
    """The ``mmfuse explain`` result for a table (see the module docstring)."""
    method = method or "auto"
    if method not in METHODS:
        raise MmfuseError(f"--method {method!r}: use one of: {', '.join(METHODS)}")
    if method == "attention" and has_attention(model.pipeline) is None:
        raise MmfuseError(f"--method attention: fusion {model.config.fusion['type']!r} exposes "
                          "no attention over tokens (relation with pairs: anchored does); use "
                          "--method integrated_gradients")
    table = as_table(data, data_root)
    rows = list(range(min(DEFAULT_ROWS, len(table)))) if rows is None else rows
    beyond = [r for r in rows if r >= len(table)]
    if beyond:
        raise MmfuseError(f"--rows {beyond[0]}: {table.source} has {len(table)} rows "
                          f"(0 to {len(table) - 1})")
    unlabelled = [p.column for p in model.pipeline.outputs.values()
                  if not table.has_column(p.column)]
    if importance and unlabelled:
        raise MmfuseError(f"{table.source} has no column {unlabelled[0]!r}: modality importance "
                          "compares predictions with the labels; add the column, or pass "
                          "--no-importance to attribute the rows alone")
    encoded = model.pipeline.encode(table, targets=importance)
    result: dict = {}
    if importance:
        measured = modality_importance(model, encoded)
        result = {"modality_importance": measured["importance"], "metric": measured["metric"],
                  "baseline": measured["baseline"]}
    result["rows"] = [explain_row(model, encoded, r, method, out_dir, steps) for r in rows]
    return result


def explain_row(model: Model, encoded, row: int, method: str, out_dir: Path | None,
                steps: int = 32) -> dict:
    """One entry of ``rows``: prediction and token attributions per output."""
    pipeline = model.pipeline
    found = attribute_row(pipeline, encoded, row, method, steps)
    predictions = pipeline.postprocess(found["row_outputs"])[0]
    # what each token stands for, once per input (a video's times come from decoding it)
    described = {name: describe_tokens(pipeline, encoded, row, name, found["inputs"],
                                       len(mask)) for name, mask in found["masks"].items()}
    outputs = {}
    for out, per_input in found["scores"].items():
        tokens, heatmaps = {}, {}
        for name, values in per_input.items():
            real = np.flatnonzero(found["masks"][name])
            tokens[name] = [{**described[name][i], "importance": round(float(values[i]), 6)}
                            for i in real]
            picture = PICTURES.get(pipeline.model.encoders[name].modality)
            if out_dir is not None and picture is not None:
                target = Path(out_dir) / f"row{row}_{out}_{name}.png"
                heatmaps[name] = str(picture(pipeline, encoded, row, name, tokens[name], target))
        entry = {"prediction": predictions[out]["prediction"], "tokens": tokens}
        if heatmaps:
            entry["heatmaps"] = heatmaps
        outputs[out] = entry
    return {"row": row, "method": found["method"], "methods": found["methods"],
            "outputs": outputs}


def _file(pipeline, encoded, row: int, name: str) -> Path:
    column = pipeline.inputs[name].column
    return resolve_file(encoded.table.rows[row].get(column), encoded.table, row, column)


def _image_picture(pipeline, encoded, row: int, name: str, tokens: list[dict],
                   target: Path) -> Path:
    """The image with its tokens' attribution as a heat map over it."""
    points, values = heat_points(tokens, np.array([t["importance"] for t in tokens]))
    return draw_heatmap(_file(pipeline, encoded, row, name), points, values, target)


def _video_picture(pipeline, encoded, row: int, name: str, tokens: list[dict],
                   target: Path) -> Path:
    """The sampled frames in a row, each above a bar of its attribution (the frames the
    encoded table already holds, not the file decoded again)."""
    column = encoded.inputs[name]
    clips, lengths = column.items
    item = column.index[row]
    frames = clips[item, : lengths[item]]
    values = np.array([t["importance"] for t in tokens])  # the real frames, in order
    return draw_frame_strip(frames[: len(values)], values, target)


# per modality: how an input's attribution is drawn with --out (audio and text: JSON only)
PICTURES = {"image": _image_picture, "video": _video_picture}


def print_explanation(result: dict, console: Console) -> None:
    """Modality importance as a table per output, then each row's prediction and top tokens."""
    from rich.table import Table as RichTable

    for out, per_input in result.get("modality_importance", {}).items():
        table = RichTable(title=f"{out}: drop in {result['metric'][out]} "
                                f"(all inputs: {result['baseline'][out]:.4f})")
        for column in ("input", "drop", "permute"):
            table.add_column(column, justify="left" if column == "input" else "right")
        for name, v in per_input.items():
            table.add_row(name, f"{v['drop']:+.4f}", f"{v['permute']:+.4f}")
        console.print(table)
    for entry in result["rows"]:
        for out, found in entry["outputs"].items():
            console.print(f"[bold]row {entry['row']}[/bold] {out}: {found['prediction']} "
                          f"({entry['method']})")
            for name, tokens in found["tokens"].items():
                best = sorted(tokens, key=lambda t: -t["importance"])[:5]
                shown = ", ".join(f"{_where(t)} {t['importance']:+.3f}" for t in best)
                console.print(f"  {name}: {shown}")
            for name, path in found.get("heatmaps", {}).items():
                console.print(f"  {name} heat map: {path}")


def _where(token: dict) -> str:
    if "position" in token:
        return f"({token['position'][0]:.2f}, {token['position'][1]:.2f})"
    if "time" in token:
        return f"{token['time']:.2f}s"
    return repr(token.get("token"))
