"""Built-in dataset generators, by the name ``mmfuse datasets NAME`` takes."""

from __future__ import annotations

from pathlib import Path

DATASETS = {
    "sort-of-clevr": "Sort-of-CLEVR (Santoro et al. 2017): 75x75 images, 20 questions each",
    "av-digits": "audio-visual digits like AV-MNIST (Vielzeuf et al. 2018): degraded 28x28 "
                 "images and noisy 1 s spoken digits, some rows missing one modality",
    "moving-shapes": "captioning: 16-frame 64x64 MP4 clips of one or two moving shapes, a "
                     "prompt ('describe the red object') and a caption",
    "spoken-numbers": "speech translation: a spoken English number 0-999, a prompt ('to "
                      "french') and the number in French, Chinese or digits",
    "photo-views": "natural images: 96x96 jittered crops of ten photographs shipped with "
                   "scikit-image and scikit-learn (cat, coffee, rocket...), one class each",
    "products": "a product table: 48x48 pictures, descriptions, brand, weight, rating and a "
                "handmade flag; price, fragile and tags each need several of them",
}


def generate_dataset(name: str, out_dir: Path, train: int | None, test: int | None, seed: int,
                     missing: float | None) -> tuple[dict, str]:
    """Run the named generator, which keeps its own default for each None; summary and a line."""
    if name == "sort-of-clevr":
        from .sort_of_clevr import generate_sort_of_clevr

        s = generate_sort_of_clevr(out_dir, seed=seed, **given(n_train=train, n_test=test))
        return s, (f"wrote {s['train_rows']} training and {s['test_rows']} test rows "
                   f"({s['train_images']} + {s['test_images']} images) to {out_dir}")
    if name == "av-digits":
        from .av_digits import generate_av_digits

        s = generate_av_digits(out_dir, seed=seed, **given(train_size=train, test_size=test,
                                                            missing_fraction=missing))
        return s, (f"wrote {s['train_rows']} training and {s['test_rows']} test rows to "
                   f"{out_dir} in {s['seconds']:.1f}s; missing images "
                   f"{sum(s['missing_image'].values())}, missing audio "
                   f"{sum(s['missing_audio'].values())}")
    if name == "photo-views":
        from .photo_views import generate_photo_views

        s = generate_photo_views(out_dir, seed=seed, **given(train_size=train, test_size=test))
        return s, (f"wrote {s['train_rows']} training and {s['test_rows']} test images of "
                   f"{len(s['classes'])} photographs to {out_dir} in {s['seconds']:.1f}s")
    if name == "products":
        from .products import generate_products

        s = generate_products(out_dir, seed=seed, **given(train_size=train, test_size=test))
        return s, (f"wrote {s['train_rows']} training and {s['test_rows']} test products "
                   f"(CSV and JSONL) to {out_dir} in {s['seconds']:.1f}s; "
                   f"{s['fragile_share']:.0%} fragile, {s['blank_weight_cells']} blank weights, "
                   f"{s['unseen_brand_test_rows']} test rows of an unseen brand")
    if name == "moving-shapes":
        from .moving_shapes import generate_moving_shapes as generate
    else:
        from .spoken_numbers import generate_spoken_numbers as generate
    s = generate(out_dir, seed=seed, **given(train_size=train, test_size=test))
    return s, (f"wrote {s['train_rows']} training and {s['test_rows']} test rows "
               f"({s['train_clips']} + {s['test_clips']} clips) to {out_dir} "
               f"in {s['seconds']:.1f}s")


def given(**options: object) -> dict:
    """The options that are not None."""
    return {k: v for k, v in options.items() if v is not None}
