"""The training loop: setup -> (train epoch -> validate -> keep best -> checkpoint) x epochs
-> restore best.

Reads top to bottom. Batches come straight from the encoded columns (no worker processes to
oversubscribe the CPUs) and are moved to the model's device while the previous step still runs.
The same loop runs in one process or in each of torchrun's (``distributed.py``: every helper is
a no-op in a world of one). Ctrl-C ends training after the current step, writes a checkpoint and
keeps the best weights so far; ``on_best`` is called whenever validation improves, so a bundle
on disk always holds the best model.

Each concern beside the loop is a small collaborator: ``checkpoint.Checkpointer`` (what a
resumed run needs), ``control.Limits`` (the ``max_minutes`` clock and the stop signals, agreed
across ranks), ``distributed`` (ranks and reductions), ``progress`` (the bar, ``metrics.jsonl``,
the data share) and ``optim`` (optimizer and schedule). What comes before and after the epochs
(reading, preprocessing, cached features, after-training fits, saving) is ``recipe.py``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import TrainingConfig
from ..data.sampler import grouped_batches, shuffled_batches
from ..device import autocast, grad_scaler
from ..errors import MmfuseError
from ..modalities import MISSING
from ..pipeline import EncodedTable, Pipeline
from . import checkpoint, distributed
from .control import Clock, Limits
from .distributed import SINGLE, Ranks
from .metrics import RunningMean
from .optim import lr_factor, make_optimizer
from .progress import EpochProgress, StepTimer, append_record
from .streamed import Stream, stream_epoch


@dataclass
class Training:
    """What the epoch loop works with, built once by :func:`setup`."""

    pipeline: Pipeline
    data: EncodedTable
    valid: EncodedTable | None
    cfg: TrainingConfig
    ranks: Ranks
    net: torch.nn.Module  # the model, in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # augmentation: differs per rank
    order_rng: np.random.Generator  # the batch order: the same on every rank
    group: np.ndarray | None  # rows that share a file, batched together
    batch_size: int  # this rank's share of the global batch
    epochs: int
    patience: int | None
    state: dict  # what a checkpoint holds besides modules and random states (fresh_state)
    limits: Limits
    checkpoints: checkpoint.Checkpointer
    timer: StepTimer
    stream: Stream | None = None  # a streamed source (streamed.py), read instead of ``data``
    extra: dict = field(default_factory=dict)  # the epoch's data figures for its record

    @property
    def model(self) -> torch.nn.Module:
        return self.pipeline.model


def train(pipeline: Pipeline, train_data: EncodedTable, valid_data: EncodedTable | None,
          cfg: TrainingConfig, metrics_path: Path | None = None,
          on_best: Callable[[int], None] | None = None, progress: bool = False,
          on_epoch: Callable[[dict], None] | None = None, run: Path | None = None,
          resume: dict | None = None, ranks: Ranks = SINGLE,
          stream: Stream | None = None) -> dict:
    """Train ``pipeline.model`` in place (on ``pipeline.device``) and leave it holding the best
    weights.

    Args:
        on_epoch: gets each epoch's record once it is written (``mmfuse tune`` reports it to
            Optuna); an exception it raises, such as ``optuna.TrialPruned``, ends training and
            propagates to the caller.
        run: the run folder that gets ``checkpoints/`` (none without it).
        resume: a checkpoint (``checkpoint.load_latest``) to continue from.
        ranks: this process's place under torchrun; only rank 0 writes files and progress.
        stream: read the training rows from this streamed source (``streamed.py``);
            ``train_data`` is then the rows the preprocessing was fitted on.

    Returns:
        A summary: epochs run, best epoch, best validation metrics, seconds, whether stopped early
        or interrupted, and ``data_share``, the fraction of step time spent preparing batches.
    """
    t = setup(pipeline, train_data, valid_data, cfg, run, resume, ranks, stream)
    if resume is not None and ranks.main and metrics_path is not None:
        checkpoint.cut_metrics(metrics_path, t.state["records"])
    bar = EpochProgress(enabled=progress and ranks.main)
    interrupted = False
    with t.limits:
        try:
            for epoch in range(t.state["epoch"], t.epochs + 1):
                if t.state["finished"]:  # a finished run resumed: nothing to train
                    break
                running, started, out_of_time = (stream_epoch if stream else train_epoch)(
                    t, epoch, bar)
                record = epoch_record(t, epoch, running, started)
                bar.finish(record)
                if ranks.main:
                    append_record(metrics_path, record)
                t.state["records"] += 1
                if on_epoch:
                    on_epoch(record)
                keep_best(t, epoch, record, on_best)
                if end_epoch(t, epoch, out_of_time):
                    break
        except KeyboardInterrupt:
            interrupted = not t.state["finished"]
        finally:
            bar.close()
            t.checkpoints.wait()  # the last checkpoint is on disk before train() returns
    return restore_best(t, interrupted)


def setup(pipeline: Pipeline, data: EncodedTable, valid: EncodedTable | None,
          cfg: TrainingConfig, run: Path | None, resume: dict | None,
          ranks: Ranks, stream: Stream | None = None) -> Training:
    """Seeds, optimizer, schedule and the loop state: fresh, or a checkpoint's."""
    model = pipeline.model
    torch.manual_seed(cfg.seed + ranks.rank)  # dropout differs per rank; the batch order not
    order_rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + ranks.rank)  # augmentation
    optimizer = make_optimizer(model, cfg)
    net = distributed.wrap(model, pipeline.device, can_miss_inputs(data, pipeline), ranks)
    scaler = grad_scaler(pipeline.device, cfg.precision)
    group = data.group_key() if cfg.group_rows_by_file is not False and stream is None \
        else None
    batch_size = max(1, cfg.batch_size // ranks.world)  # the global batch stays batch_size
    if stream is not None and resume is not None and resume.get("stream_rows"):
        stream.rows = resume["stream_rows"]  # the epoch length the run began with
    rows = stream.rows if stream is not None else len(data)
    steps_per_epoch = math.ceil(math.ceil(rows / batch_size) / ranks.world)
    pretrained = any(h.traits.pretrained for h in model.heads.values())
    epochs, patience = resolve_epochs(cfg, steps_per_epoch, pretrained)
    total, warmup = steps_per_epoch * epochs, int(cfg.warmup_epochs * steps_per_epoch)
    state = fresh_state() if resume is None else resume_state(resume, ranks)
    state["stream_rows"] = rows if stream is not None else None
    limits = Limits(Clock(cfg.max_minutes, state["elapsed"]), ranks)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total, warmup, cfg.lr_schedule, limits.schedule_progress(s, total)))
    checkpoints = checkpoint.Checkpointer(
        run, cfg.keep_checkpoints, ranks, {"model": model, "optimizer": optimizer,
                                           "scheduler": scheduler, "scaler": scaler},
        generator, pipeline.device)
    if resume is not None:
        checkpoints.restore(resume)
    return Training(pipeline, data, valid, cfg, ranks, net, optimizer, scheduler, scaler,
                    generator, order_rng, group, batch_size, epochs, patience, state, limits,
                    checkpoints, StepTimer(), stream)


def train_epoch(t: Training, epoch: int, bar: EpochProgress) -> tuple[RunningMean, float, bool]:
    """The epoch's steps, from where a resumed run left off.

    Returns:
        The epoch's running means, when it started, and whether time ran out (the epoch is
        then cut short: what it learned is validated, then training stops).
    """
    state = t.state
    t.model.train()
    batches = epoch_batches(t)
    running, started = RunningMean(), time.perf_counter()
    if state["position"] and state["running"]:
        running.load_state(state["running"])
    bar.start(epoch, t.epochs, len(batches))
    pending = None
    for i in range(state["position"], len(batches)):
        began = time.perf_counter()
        inputs, targets = pending or prepare(t, batches[i])
        logits, loss = step(t, inputs, targets)
        t.limits.agree()  # a stop asked for on any rank; the clock of the slowest
        t.scheduler.step()
        state["step"] += 1
        last = i + 1 == len(batches)
        due = bool(t.cfg.checkpoint_every_steps) and not last and \
            state["step"] % t.cfg.checkpoint_every_steps == 0
        # the next batch is prepared while the device still runs this step (not when a
        # checkpoint is due, which must hold the random state before it)
        pending = prepare(t, batches[i + 1]) if not (last or due or t.limits.stopping) else None
        running.update(len(batches[i]), loss=loss.item(),
                       accuracy=mean_accuracy(t.pipeline, logits, targets))
        t.timer.stepped(began)
        bar.advance(running.means(), running.examples_per_second())
        if t.limits.stopping and not last:
            save_checkpoint(t, epoch, i + 1, running)
            raise KeyboardInterrupt
        if due:
            save_checkpoint(t, epoch, i + 1, running)
        if t.limits.out_of_time:
            break
    state["position"], state["running"], state["epochs_run"] = 0, None, epoch
    state["order_rng"] = t.order_rng.bit_generator.state  # the next epoch's start
    return running, started, t.limits.out_of_time


def epoch_batches(t: Training) -> list[np.ndarray]:
    """This rank's batches of the epoch (rows of one file together, unless switched off)."""
    # the batch order's generator as of this epoch's start: restored on resume (a no-op
    # otherwise), so a resumed epoch draws the order the interrupted one drew
    if t.state["order_rng"] is not None:
        t.order_rng.bit_generator.state = t.state["order_rng"]
    t.state["order_rng"] = t.order_rng.bit_generator.state
    order = grouped_batches(t.group, t.batch_size, t.order_rng) if t.group is not None \
        else shuffled_batches(len(t.data), t.batch_size, t.order_rng)
    return distributed.shard(order, t.ranks)


def prepare(t: Training, rows: np.ndarray) -> tuple[dict, dict]:
    """The inputs and targets of a training batch (augmented), timed as data preparation."""
    began = time.perf_counter()
    batch = t.pipeline.batch(t.data, rows, True, t.generator)
    t.timer.prepared(began)
    return batch


def step(t: Training, inputs: dict, targets: dict, weight: float = 1.0
         ) -> tuple[dict, torch.Tensor]:
    """One optimizer step on a batch; returns its logits and loss. ``weight`` 0 takes part in
    the ranks' gradient reduction without adding to it (a streamed rank out of rows)."""
    cfg = t.cfg
    with autocast(t.pipeline.device, cfg.precision):
        logits = t.net(inputs, targets)
        loss = batch_loss(t.pipeline, logits, targets, cfg.label_smoothing)
        if weight != 1.0:
            loss = loss * weight
    t.optimizer.zero_grad(set_to_none=True)
    if not loss.requires_grad:  # nothing that trains reaches the loss (a frozen LM reading
        t.optimizer.step()      # text alone): the batch is scored, and no weight changes
        return logits, loss
    t.scaler.scale(loss).backward()
    if cfg.grad_clip:
        t.scaler.unscale_(t.optimizer)
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.grad_clip)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    return logits, loss


def epoch_record(t: Training, epoch: int, running: RunningMean, started: float) -> dict:
    """The epoch's line of ``metrics.jsonl``: train metrics over every rank's rows, throughput
    of all ranks together, then the validation metrics."""
    ranks = t.ranks
    means = distributed.weighted_mean(running.means(), running.count, ranks)
    speed = distributed.weighted_mean(
        {"speed": running.examples_per_second()}, 1.0, ranks)["speed"] * ranks.world
    record = {"epoch": epoch, **{f"train_{k}": v for k, v in means.items()},
              "examples_per_second": speed, "learning_rate": t.optimizer.param_groups[0]["lr"],
              "seconds": t.limits.clock.elapsed()}
    valid = validation_metrics(t.pipeline, t.valid, t.cfg, ranks) if t.valid else None
    if valid:
        record.update({f"valid_{k}": v for k, v in valid.items()})
    record.update(t.extra)
    record["epoch_seconds"] = time.perf_counter() - started  # train + validate
    return record


def keep_best(t: Training, epoch: int, record: dict,
              on_best: Callable[[int], None] | None) -> None:
    """Keep the weights of the lowest validation loss (without validation, the last epoch's)
    and count the epochs without progress, for early stopping."""
    state, best = t.state, t.state["best"]
    validated = "valid_loss" in record
    score = record["valid_loss"] if validated else -epoch
    accuracy = record["valid_accuracy"] if validated else -math.inf
    state["stalled"] = 0 if not validated or improved(score, accuracy, best) \
        else state["stalled"] + 1
    best["accuracy"] = max(best["accuracy"], accuracy)
    if score < best["loss"]:
        best.update(loss=score, epoch=epoch, metrics=record,
                    state=copy.deepcopy(t.model.state_dict()))
        if on_best and t.ranks.main:
            on_best(epoch)


def end_epoch(t: Training, epoch: int, out_of_time: bool) -> bool:
    """Checkpoint the end of the epoch; True when training ends here (patience run out, time
    up, or the last epoch). A stop asked for on any rank ends it as an interruption."""
    stop_now = t.limits.stop_requested()
    ending = bool(t.patience and t.state["stalled"] >= t.patience) or out_of_time \
        or epoch == t.epochs
    t.state["finished"] = ending and not stop_now
    save_checkpoint(t, epoch + 1, 0, None)
    if stop_now:
        raise KeyboardInterrupt
    return ending


def save_checkpoint(t: Training, epoch: int, position: int, running: RunningMean | None) -> None:
    """Checkpoint where the loop is: the epoch, the position in its batches, its running sums."""
    t.state.update(epoch=epoch, position=position, elapsed=t.limits.clock.elapsed(),
                   running=running.state() if running else None)
    t.checkpoints.save(t.state)


def restore_best(t: Training, interrupted: bool) -> dict:
    """Load the best weights into the model and summarise the run."""
    best, epochs_run = t.state["best"], t.state["epochs_run"]
    if best["state"] is not None:
        t.model.load_state_dict(best["state"])
    t.model.eval()
    return {"epochs": epochs_run, "best_epoch": best["epoch"], "best": best["metrics"],
            "seconds": round(t.limits.clock.elapsed(), 2), "interrupted": interrupted,
            "stopped_early": epochs_run < t.epochs and not interrupted,
            "data_share": t.timer.data_share(), "steps": t.state["step"]}


def can_miss_inputs(data: EncodedTable, pipeline: Pipeline) -> bool:
    """Whether an input can be missing from every row of a batch (missing values, or modality
    dropout): its encoder then takes no part in that step (see ``distributed.wrap``)."""
    return any((col.index == MISSING).any() for col in data.inputs.values()) or any(
        i.modality_dropout for i in pipeline.config.inputs)


AUTO_MIN_STEPS = 2000  # ``epochs: auto`` trains for at least this many optimizer steps ...
AUTO_MAX_EPOCHS = 200  # ... but for no more epochs than this
# a pretrained LM answering: a few epochs suffice, and each is costly (benchmarks/lm.py: LoRA
# on 130 rows has its best validation loss after 2 epochs, its training loss near 0 after 6).
# Patience waits at least 2 epochs and 30 steps: on 43 rows (3 steps an epoch) a patience of 2
# epochs stopped LoRA after 12 steps on the noise of 5 validation rows (0.425 exact match on
# new wordings), one of 10 epochs let it reach 0.55.
AUTO_PRETRAINED_STEPS, AUTO_PRETRAINED_EPOCHS = 150, (3, 20)
AUTO_PRETRAINED_PATIENCE, AUTO_PRETRAINED_PATIENCE_STEPS = 2, 30


def resolve_epochs(cfg: TrainingConfig, steps_per_epoch: int, pretrained: bool = False
                   ) -> tuple[int, int | None]:
    """Epochs and early-stopping patience for a table of ``steps_per_epoch`` batches.

    ``epochs: auto`` gives at least 10 epochs and enough of them for ``AUTO_MIN_STEPS`` steps
    (at most ``AUTO_MAX_EPOCHS``): a table of 300 rows has 5 batches an epoch, and 10 epochs
    of it are 50 steps, too few to learn anything. ``early_stopping_patience: auto`` waits a
    tenth of those epochs, at least 5, so the long runs of a small table are not cut by the
    noise of its small validation split. With a ``pretrained`` head (a causal LM answers),
    they aim at ``AUTO_PRETRAINED_STEPS`` steps in 3 to 20 epochs, and patience is 2 epochs or
    ``AUTO_PRETRAINED_PATIENCE_STEPS`` steps, whichever is longer.
    """
    epochs = cfg.epochs
    if epochs == "auto" and pretrained:
        low, high = AUTO_PRETRAINED_EPOCHS
        epochs = min(high, max(low, math.ceil(AUTO_PRETRAINED_STEPS / steps_per_epoch)))
    elif epochs == "auto":
        epochs = min(AUTO_MAX_EPOCHS, max(10, math.ceil(AUTO_MIN_STEPS / steps_per_epoch)))
    patience = cfg.early_stopping_patience
    if patience == "auto" and pretrained:
        patience = max(AUTO_PRETRAINED_PATIENCE,
                       math.ceil(AUTO_PRETRAINED_PATIENCE_STEPS / steps_per_epoch))
    elif patience == "auto":
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
def validation_metrics(pipeline: Pipeline, data: EncodedTable, cfg: TrainingConfig,
                       ranks: Ranks = SINGLE) -> dict:
    """Mean loss and accuracy (averaged over outputs) on the validation table, computed in fp32
    from the (autocast) logits. Under torchrun each rank scores its share of the rows and the
    means are reduced, weighted by rows."""
    rows = distributed.rows_of(len(data), ranks)
    with autocast(pipeline.device, cfg.precision):
        logits = pipeline.logits(data, cfg.eval_batch_size or cfg.batch_size,
                                 teacher=True, rows=rows)
    targets = {n: pipeline.outputs[n].target_tensor(t[rows]) for n, t in data.targets.items()}
    if len(rows) == 0:  # more ranks than validation rows
        return distributed.weighted_mean({"loss": 0.0, "accuracy": 0.0}, 0.0, ranks)
    loss = batch_loss(pipeline, logits, targets, 0.0).item()
    return distributed.weighted_mean(
        {"loss": loss, "accuracy": mean_accuracy(pipeline, logits, targets)}, len(rows), ranks)


def mean_accuracy(pipeline: Pipeline, logits: dict, targets: dict) -> float:
    """Each head's higher-is-better score averaged over outputs (``valid_accuracy``): accuracy
    of category and binary outputs, token accuracy of text, R² of numbers (on the normalised
    scale), Jaccard of sets. Outputs whose batch holds no target are left out."""
    heads = pipeline.model.heads
    scores = [heads[n].accuracy(out, targets[n]) for n, out in logits.items()]
    known = [s for s in scores if not np.isnan(s)]
    return float(np.mean(known)) if known else float("nan")


def fresh_state() -> dict:
    """What a checkpoint holds besides module and random states, at the start of a run."""
    return {"epoch": 1, "position": 0, "step": 0, "order_rng": None, "running": None,
            "stream": None, "stream_rows": None,
            "best": {"loss": math.inf, "accuracy": -math.inf, "epoch": 0, "state": None,
                     "metrics": {}},
            "stalled": 0, "records": 0, "elapsed": 0.0, "epochs_run": 0, "finished": False}


def resume_state(saved: dict, ranks: Ranks) -> dict:
    """The loop state of a checkpoint (see :func:`fresh_state`).

    Raises:
        MmfuseError: the checkpoint was written by another number of processes.
    """
    if saved.get("world", 1) != ranks.world:
        raise MmfuseError(f"the checkpoint was written by {saved.get('world', 1)} process(es) "
                          f"and this run has {ranks.world}; resume with --nproc "
                          f"{saved.get('world', 1)}")
    return {key: saved.get(key, value) for key, value in fresh_state().items()}
