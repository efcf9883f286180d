"""Built-in dataset generators, by the name ``mmfuse datasets NAME`` takes."""

from __future__ import annotations

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
}
