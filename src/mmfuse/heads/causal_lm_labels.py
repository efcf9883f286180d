"""``causal_lm_category`` and ``causal_lm_binary``: a causal LM scores each label's text after
the prompt (``decoder: {type: causal_lm}`` on a category or binary output).

The prompt is the one a text output's LM reads (``heads/causal_lm.py``: text inputs as words,
other inputs as projected tokens); each label ``c`` is scored by the LM's log-likelihood of its
text followed by the end token,

    s_c = sum_t log p(y^c_t | prompt, y^c_<t),    y^c = tokens(label_c) + [end],

and the scores are the logits: ``softmax(s / T)`` over a category's labels (cross-entropy
trains the projector, and the LM with ``lm: lora | full``), ``sigmoid(s_pos - s_neg)`` for a
binary output. Metrics, probabilities, calibration and the answer are those of the output's
usual head (``category.py``, ``binary.py``). A row's prompt is read once per label, so a step
costs about as many LM passes as there are labels.

Shapes: inputs' Features and the text inputs' ids -> logits ``[B, labels]`` (category) or
``[B]`` (binary).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..registry import HEADS
from ..specs import InputDims, TargetSpec
from .base import HeadTraits
from .binary import BinaryHead
from .category import CategoryHead
from .causal_lm import CausalLMHead, LMOptions


class LMCategoryOptions(LMOptions):
    class_weights: Literal["balanced"] | None = Field(
        None, description="balanced: weight each class's loss by N / (classes * its rows)")
    calibrate: bool = Field(False, description="fit a softmax temperature on the validation "
                            "split after training")
    top_k: int = Field(3, ge=1, description="k of the top_k_accuracy metric")
    report_top: int = Field(10, ge=1, description="probabilities reported per prediction")


class LMBinaryOptions(LMOptions):
    positive: str | None = Field(None, description="the positive label as written in the table")
    positive_class_weight: float = Field(1.0, gt=0)
    threshold: float | Literal["auto"] = Field(
        0.5, description="probability at which the positive label is predicted; auto: the one "
        "maximising F1 on the validation split")


class LabelScoring(CausalLMHead):
    """Each label's log-likelihood after the prompt."""

    def __init__(self, options: LMOptions, in_dim: int, spec: TargetSpec,
                 input_dims: dict[str, InputDims] | None = None) -> None:
        super().__init__(options, in_dim, spec, input_dims)
        self.labels = list(spec.labels)
        self.label_ids = [[*self.tokenizer.encode(str(label), add_special_tokens=False),
                           self.end_id] for label in self.labels]

    def scores(self, fused: torch.Tensor, features: dict, inputs: dict | None
               ) -> torch.Tensor:
        """``[B, labels]``: the log-likelihood of each label's text after each row's prompt."""
        prompts = self.prompts(features, inputs or {}, fused.device)
        rows = [p for p in prompts for _ in self.label_ids]
        stats = self.continuations(rows, [ids for _ in prompts for ids in self.label_ids])
        return -stats["loss_sum"].view(len(prompts), len(self.label_ids))

    def describe(self) -> dict:
        return {**self.describe_lm(), "labels": self.labels}


@HEADS.register("causal_lm_category", LMCategoryOptions)
class LMCategoryHead(LabelScoring):
    """A category output answered by the LM's likeliest label."""

    loss = CategoryHead.loss
    accuracy = staticmethod(CategoryHead.accuracy)
    calibrate = CategoryHead.calibrate
    postprocess = CategoryHead.postprocess

    def __init__(self, options: LMCategoryOptions, in_dim: int, spec: TargetSpec,
                 input_dims: dict[str, InputDims] | None = None) -> None:
        super().__init__(options, in_dim, spec, input_dims)
        self.temperature = float(spec.calibration.get("temperature", 1.0))
        weights = None
        if options.class_weights == "balanced" and spec.counts:
            counts = torch.tensor([float(spec.counts.get(label, 0)) for label in self.labels])
            weights = counts.sum() / (len(counts) * counts.clamp(min=1.0))
        self.register_buffer("class_weight", weights, persistent=False)

    @property
    def traits(self) -> HeadTraits:
        return HeadTraits(reads_inputs=True, pretrained=True,
                          needs_calibration=self.options.calibrate,
                          calibrates_logits=True)

    def forward(self, fused: torch.Tensor, features: dict, target: torch.Tensor | None = None,
                inputs: dict | None = None) -> torch.Tensor:
        logits = self.scores(fused, features, inputs)
        return logits if self.temperature == 1.0 else logits / self.temperature


@HEADS.register("causal_lm_binary", LMBinaryOptions)
class LMBinaryHead(LabelScoring):
    """A binary output: the logit is the positive label's log-likelihood minus the
    negative's."""

    loss = BinaryHead.loss
    accuracy = staticmethod(BinaryHead.accuracy)
    calibrate = BinaryHead.calibrate
    label = BinaryHead.label
    postprocess = BinaryHead.postprocess

    def __init__(self, options: LMBinaryOptions, in_dim: int, spec: TargetSpec,
                 input_dims: dict[str, InputDims] | None = None) -> None:
        super().__init__(options, in_dim, spec, input_dims)
        self.threshold = float(spec.calibration.get(
            "threshold", 0.5 if options.threshold == "auto" else options.threshold))
        self.boolean = spec.json_bool

    @property
    def traits(self) -> HeadTraits:
        return HeadTraits(reads_inputs=True, pretrained=True,
                          needs_calibration=self.options.threshold == "auto")

    def forward(self, fused: torch.Tensor, features: dict, target: torch.Tensor | None = None,
                inputs: dict | None = None) -> torch.Tensor:
        scores = self.scores(fused, features, inputs)
        return scores[:, 1] - scores[:, 0]

    def describe(self) -> dict:
        return {**super().describe(), "positive": self.labels[1],
                "threshold": round(self.threshold, 6)}
