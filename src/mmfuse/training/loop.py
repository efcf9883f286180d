"""The training loop: setup -> (train epoch -> validate -> keep best) x epochs -> restore best.

Reads top to bottom. Batches come straight from the encoded in-memory columns (no worker
processes to oversubscribe the CPUs). Ctrl-C ends training after the current batch and keeps
the best weights so far; ``on_best`` is called whenever validation improves, so a bundle on disk
always holds the best model.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..config import TrainingConfig
from ..data.features import cache_frozen_features
from ..data.sampler import grouped_batches, shuffled_batches
from ..pipeline import EncodedTable, Pipeline
from .metrics import RunningMean
from .progress import EpochProgress


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
    (``time_used``, the fraction of ``max_minutes`` gone), so a run cut short by its time limit
    still ends at a low learning rate instead of being stopped mid-schedule.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_used))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)  # "onecycle": warm-up then linear decay to zero


AUTO_MIN_STEPS = 2000  # ``epochs: auto`` trains for at least this many optimizer steps ...
AUTO_MAX_EPOCHS = 200  # ... but for no more epochs than this


def resolve_epochs(cfg: TrainingConfig, steps_per_epoch: int) -> tuple[int, int | None]:
    """Epochs and early-stopping patience for a table of ``steps_per_epoch`` batches.

    ``epochs: auto`` gives at least 10 epochs and enough of them for ``AUTO_MIN_STEPS`` steps
    (at most ``AUTO_MAX_EPOCHS``): a table of 300 rows has 5 batches an epoch, and 10 epochs
    of it are 50 steps, too few to learn anything. ``early_stopping_patience: auto`` waits a
    tenth of those epochs, at least 5, so the long runs of a small table are not cut by the
    noise of its small validation split.
    """
    epochs = cfg.epochs
    if epochs == "auto":
        epochs = min(AUTO_MAX_EPOCHS, max(10, math.ceil(AUTO_MIN_STEPS / steps_per_epoch)))
    patience = cfg.early_stopping_patience
    if patience == "auto":
        patience = max(5, epochs // 10)
    return epochs, patience


def improved(loss: float, accuracy: float, best: dict) -> bool:
    """Whether an epoch still counts as progress for early stopping: validation accuracy
    went up, or validation loss went down by more than 1% of the best loss (and 0.001), so the
    last tiny gains of an overconfident model on a learned table do not keep it running."""
    return accuracy > best["accuracy"] or loss < best["loss"] - max(1e-3, 0.01 * best["loss"])


def batch_loss(pipeline: Pipeline, logits: dict, targets: dict, smoothing: float) -> torch.Tensor:
    """The weighted sum of every head's loss."""
    weights = {o.name: o.loss_weight for o in pipeline.config.outputs}
    return sum(weights[name] * pipeline.model.heads[name].loss(out, targets[name], smoothing)
               for name, out in logits.items())


@torch.no_grad()
def validation_metrics(pipeline: Pipeline, data: EncodedTable, cfg: TrainingConfig) -> dict:
    """Mean loss and accuracy (averaged over outputs) on the validation table."""
    logits = pipeline.logits(data, cfg.eval_batch_size or max(256, cfg.batch_size), teacher=True)
    targets = {n: pipeline.outputs[n].target_tensor(t) for n, t in data.targets.items()}
    loss = batch_loss(pipeline, logits, targets, 0.0).item()
    return {"loss": loss, "accuracy": mean_accuracy(pipeline, logits, targets)}


def mean_accuracy(pipeline: Pipeline, logits: dict, targets: dict) -> float:
    """Accuracy averaged over outputs (token accuracy for text outputs)."""
    heads = pipeline.model.heads
    return float(np.mean([heads[n].accuracy(out, targets[n]) for n, out in logits.items()]))


def train(pipeline: Pipeline, train_data: EncodedTable, valid_data: EncodedTable | None,
          cfg: TrainingConfig, metrics_path: Path | None = None,
          on_best: Callable[[int], None] | None = None, progress: bool = False,
          on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train ``pipeline.model`` in place and leave it holding the best weights.

    ``on_epoch`` gets each epoch's record once it is written (``mmfuse tune`` reports it to
    Optuna); an exception it raises, such as ``optuna.TrialPruned``, ends training and
    propagates to the caller.

    Returns:
        A summary: epochs run, best epoch, best validation metrics, seconds, whether stopped early
        or interrupted.
    """
    # --- setup
    model = pipeline.model
    # frozen pretrained encoders run once per unique item here, not in every epoch
    train_data, valid_data = cache_frozen_features(pipeline, [train_data, valid_data], progress)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    group = train_data.group_key() if cfg.group_rows_by_file is not False else None
    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    epochs, patience = resolve_epochs(cfg, steps_per_epoch)
    total_steps, warmup = steps_per_epoch * epochs, int(cfg.warmup_epochs * steps_per_epoch)
    best = {"loss": math.inf, "accuracy": -math.inf, "epoch": 0, "state": None, "metrics": {}}
    epochs_run, stalled, interrupted, started = 0, 0, False, time.perf_counter()
    deadline = started + 60 * cfg.max_minutes if cfg.max_minutes else math.inf

    def time_used() -> float:
        return (time.perf_counter() - started) / (deadline - started) if cfg.max_minutes else 0.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.lr_schedule, time_used()))
    bar = EpochProgress(enabled=progress)

    # --- train
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            running, epoch_started = RunningMean(), time.perf_counter()
            batches = (grouped_batches(group, cfg.batch_size, rng) if group is not None
                       else shuffled_batches(len(train_data), cfg.batch_size, rng))
            bar.start(epoch, epochs, len(batches))
            for rows in batches:
                inputs, targets = pipeline.batch(train_data, rows, True, generator)
                logits = model(inputs, targets)
                loss = batch_loss(pipeline, logits, targets, cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                running.update(len(rows), loss=loss.item(),
                               accuracy=mean_accuracy(pipeline, logits, targets))
                bar.advance(running.means(), running.examples_per_second())
                if time.perf_counter() > deadline:
                    break  # out of time: validate what this epoch learned, then stop
            epochs_run = epoch

            # --- evaluate
            record = {"epoch": epoch, **{f"train_{k}": v for k, v in running.means().items()},
                      "examples_per_second": running.examples_per_second(),
                      "learning_rate": optimizer.param_groups[0]["lr"],
                      "seconds": time.perf_counter() - started}
            valid = validation_metrics(pipeline, valid_data, cfg) if valid_data else None
            if valid:
                record.update({f"valid_{k}": v for k, v in valid.items()})
            record["epoch_seconds"] = time.perf_counter() - epoch_started  # train + validate
            bar.finish(record)
            _append_jsonl(metrics_path, record)
            if on_epoch:
                on_epoch(record)

            # --- keep the best
            score = valid["loss"] if valid else -epoch  # without validation, the last is best
            accuracy = valid["accuracy"] if valid else -math.inf
            stalled = 0 if not valid or improved(score, accuracy, best) else stalled + 1
            best["accuracy"] = max(best["accuracy"], accuracy)
            if score < best["loss"]:
                best.update(loss=score, epoch=epoch, metrics=record,
                            state=copy.deepcopy(model.state_dict()))
                if on_best:
                    on_best(epoch)
            if patience and stalled >= patience:
                break
            if time.perf_counter() > deadline:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()

    # --- restore the best
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return {"epochs": epochs_run, "best_epoch": best["epoch"], "best": best["metrics"],
            "seconds": round(time.perf_counter() - started, 2), "interrupted": interrupted,
            "stopped_early": epochs_run < epochs and not interrupted}


def _append_jsonl(path: Path | None, record: dict) -> None:
    if path is None:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({k: round(v, 6) if isinstance(v, float) else v
                            for k, v in record.items()}) + "\n")
