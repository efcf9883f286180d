"""What every head declares about itself: :class:`HeadTraits`, read by the model, training,
calibration and evaluation (never probed with ``getattr``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn


@dataclass(frozen=True)
class HeadTraits:
    """What a head needs from the rest of mmfuse.

    Attributes:
        generates: it reads the inputs' features (and, in training, the targets) beside the
            fused vector, and generates its answer (a text decoder).
        needs_teacher: evaluation also scores its teacher-forced logits (token accuracy, loss).
        needs_calibration: something is fitted on the validation split after training (a
            category temperature, a binary threshold).
        calibrates_logits: what is fitted scales the head's own logits, so it is not fitted
            when a classic predictor serves the output.
        reads_inputs: it also reads the inputs' tensors as preprocessed (a causal LM reads
            the text inputs' token ids in its prompt).
        pretrained: a pretrained model answers (a causal LM): ``epochs: auto`` aims at
            ``AUTO_PRETRAINED_STEPS`` steps, not a from-scratch model's ``AUTO_MIN_STEPS``
            (training/loop.py ``resolve_epochs``).
    """

    generates: bool = False
    needs_teacher: bool = False
    needs_calibration: bool = False
    calibrates_logits: bool = False
    reads_inputs: bool = False
    pretrained: bool = False


class Head(nn.Module):
    """A head: ``forward(fused [B, D])`` to the output's raw answers, ``loss``, ``accuracy``
    (the training loop's higher-is-better score), ``describe`` and ``postprocess``."""

    traits = HeadTraits()
    needs_input_dims = False  # built with every input's InputDims (it reads their features)

    def bundle_files(self) -> dict[str, Path]:
        """Files a bundle must hold beside the weights, ``{path in the bundle: file}`` (a causal
        LM that is not a shipped package); none by default."""
        return {}
