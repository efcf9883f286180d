"""The optimizer and its learning-rate schedule: AdamW, Adam or SGD over two parameter groups
(new and pretrained weights), and warm-up then constant, cosine or one-cycle decay."""

from __future__ import annotations

import math

import torch

from ..config import TrainingConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW (default), Adam or SGD with momentum over the trainable parameters; pretrained
    weights that train get ``pretrained_lr_multiplier`` times the learning rate."""
    params = parameter_groups(model, cfg.learning_rate, cfg.pretrained_lr_multiplier)
    # foreach=True updates all tensors in a few fused ops; on CPU torch defaults to a Python loop
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=0.9,
                               weight_decay=cfg.weight_decay, foreach=True)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, foreach=True)


def parameter_groups(model: torch.nn.Module, lr: float, multiplier: float) -> list[dict]:
    """The trainable parameters in two groups: new ones at ``lr`` (first, so logs report its
    rate), pretrained ones (those any encoder's ``pretrained_parameters()`` names) at
    ``lr * multiplier``. Empty groups are left out."""
    pretrained = {id(p) for m in model.modules() if hasattr(m, "pretrained_parameters")
                  for p in m.pretrained_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in pretrained], "lr": lr},
              {"params": [p for p in trainable if id(p) in pretrained], "lr": lr * multiplier}]
    return [g for g in groups if g["params"]]


def lr_factor(step: int, total: int, warmup: int, schedule: str,
              time_used: float = 0.0) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant/cosine/one-cycle.

    The decay follows whichever budget is further spent: steps (``step / total``) or wall time
    (``time_used``: ``Clock.schedule_progress``, zero unless the run is projected to overrun
    ``max_minutes``), so a run cut short by its time limit still ends at a low learning rate
    instead of being stopped mid-schedule, and a run that fits decays by steps alone.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_used))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)  # "onecycle": warm-up then linear decay to zero
