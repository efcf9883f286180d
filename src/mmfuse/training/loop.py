"""The training loop: setup -> (train epoch -> validate -> keep best -> checkpoint) x epochs
-> restore best.

Reads top to bottom. Batches come straight from the encoded columns (no worker processes to
oversubscribe the CPUs) and are moved to the model's device while the previous step still runs.
The same loop runs in one process or in each of torchrun's (``distributed.py``: every helper is
a no-op in a world of one). Ctrl-C ends training after the current step, writes a checkpoint and
keeps the best weights so far; ``on_best`` is called whenever validation improves, so a bundle
on disk always holds the best model.
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
from ..errors import MmfuseError
from ..modalities import MISSING
from ..pipeline import EncodedTable, Pipeline
from . import checkpoint, distributed
from .control import Clock, StopRequest
from ..device import autocast, grad_scaler
from .distributed import SINGLE, Ranks
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


def train(pipeline: Pipeline, train_data: EncodedTable, valid_data: EncodedTable | None,
          cfg: TrainingConfig, metrics_path: Path | None = None,
          on_best: Callable[[int], None] | None = None, progress: bool = False,
          on_epoch: Callable[[dict], None] | None = None, run: Path | None = None,
          resume: dict | None = None, ranks: Ranks = SINGLE) -> dict:
    """Train ``pipeline.model`` in place (on ``pipeline.device``) and leave it holding the best
    weights.

    Args:
        on_epoch: gets each epoch's record once it is written (``mmfuse tune`` reports it to
            Optuna); an exception it raises, such as ``optuna.TrialPruned``, ends training and
            propagates to the caller.
        run: the run folder that gets ``checkpoints/`` (none without it).
        resume: a checkpoint (``checkpoint.load_latest``) to continue from.
        ranks: this process's place under torchrun; only rank 0 writes files and progress.

    Returns:
        A summary: epochs run, best epoch, best validation metrics, seconds, whether stopped early
        or interrupted, and ``data_share``, the fraction of step time spent preparing batches.
    """
    # --- setup
    model, device = pipeline.model, pipeline.device
    # frozen pretrained encoders run once per unique item here, not in every epoch
    with distributed.main_first(ranks):  # built once, by rank 0
        train_data, valid_data = cache_frozen_features(pipeline, [train_data, valid_data],
                                                       progress and ranks.main)
    torch.manual_seed(cfg.seed + ranks.rank)  # dropout differs per rank; the batch order not
    order_rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + ranks.rank)  # augmentation
    optimizer = make_optimizer(model, cfg)
    net = wrap_distributed(model, train_data, pipeline, ranks)
    scaler = grad_scaler(device, cfg.precision)
    group = train_data.group_key() if cfg.group_rows_by_file is not False else None
    rank_batch = max(1, cfg.batch_size // ranks.world)  # the global batch stays batch_size
    steps_per_epoch = math.ceil(math.ceil(len(train_data) / rank_batch) / ranks.world)
    epochs, patience = resolve_epochs(cfg, steps_per_epoch)
    total_steps, warmup = steps_per_epoch * epochs, int(cfg.warmup_epochs * steps_per_epoch)
    state = fresh_state() if resume is None else resume_state(resume, ranks)
    clock = Clock(cfg.max_minutes, state["elapsed"])
    shared = {"used": 0.0}  # budget fraction used, the largest over ranks
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total_steps, warmup, cfg.lr_schedule,
        clock.schedule_progress(s, total_steps, shared["used"])))
    if resume is not None:
        restore_modules(resume, ranks, model, optimizer, scheduler, scaler, generator)
        if ranks.main and metrics_path is not None:
            checkpoint.cut_metrics(metrics_path, state["records"])
    bar = EpochProgress(enabled=progress and ranks.main)
    prepare_seconds, step_seconds = 0.0, 1e-9
    interrupted, done = False, state["finished"]  # a finished run resumed: nothing to train
    writer = checkpoint.Writer()

    def prepare(rows: np.ndarray) -> tuple[dict, dict]:
        nonlocal prepare_seconds
        began = time.perf_counter()
        batch = pipeline.batch(train_data, rows, True, generator)
        prepare_seconds += time.perf_counter() - began
        return batch

    def save_checkpoint(epoch: int, position: int, running: RunningMean | None) -> None:
        state.update(epoch=epoch, position=position, elapsed=clock.elapsed(),
                     running=running.state() if running else None)
        rngs = distributed.gather(random_states(generator, device), ranks)  # every rank's
        if run is not None and ranks.main:
            writer.save(run, state["step"], {
                **state, "world": ranks.world, "rngs": rngs, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict()}, cfg.keep_checkpoints)

    # --- train
    with StopRequest() as stop:
        try:
            for epoch in range(state["epoch"], epochs + 1):
                if done:
                    break
                model.train()
                # the batch order's generator as of this epoch's start: restored on resume (a
                # no-op otherwise), so a resumed epoch draws the order the interrupted one drew
                if state["order_rng"] is not None:
                    order_rng.bit_generator.state = state["order_rng"]
                state["order_rng"] = order_rng.bit_generator.state
                batches = distributed.shard(
                    grouped_batches(group, rank_batch, order_rng) if group is not None
                    else shuffled_batches(len(train_data), rank_batch, order_rng), ranks)
                running, epoch_started = RunningMean(), time.perf_counter()
                if state["position"] and state["running"]:
                    running.load_state(state["running"])
                bar.start(epoch, epochs, len(batches))
                position, pending, out_of_time = state["position"], None, False
                for i in range(position, len(batches)):
                    step_began = time.perf_counter()
                    inputs, targets = pending or prepare(batches[i])
                    with autocast(device, cfg.precision):
                        logits = net(inputs, targets)
                        loss = batch_loss(pipeline, logits, targets, cfg.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    # one collective a step: a stop asked for on any rank, the clock's largest
                    flags = distributed.largest([float(stop.requested), clock.used()], ranks)
                    shared["used"] = flags[1]
                    scheduler.step()
                    state["step"] += 1
                    last = i + 1 == len(batches)
                    due = bool(cfg.checkpoint_every_steps) and not last and \
                        state["step"] % cfg.checkpoint_every_steps == 0
                    stopping = bool(flags[0])
                    # the next batch is prepared while the device still runs this step (not
                    # when a checkpoint is due, which must hold the random state before it)
                    pending = prepare(batches[i + 1]) if not (last or due or stopping) else None
                    running.update(len(batches[i]), loss=loss.item(),
                                   accuracy=mean_accuracy(pipeline, logits, targets))
                    step_seconds += time.perf_counter() - step_began
                    bar.advance(running.means(), running.examples_per_second())
                    if stopping and not last:
                        save_checkpoint(epoch, i + 1, running)
                        raise KeyboardInterrupt
                    if due:
                        save_checkpoint(epoch, i + 1, running)
                    if flags[1] >= 1.0:
                        out_of_time = True
                        break  # out of time: validate what this epoch learned, then stop
                state["position"], state["running"], state["epochs_run"] = 0, None, epoch
                state["order_rng"] = order_rng.bit_generator.state  # the next epoch's start

                # --- evaluate
                # train metrics over every rank's rows; throughput of all ranks together
                means = distributed.weighted_mean(running.means(), running.count, ranks)
                speed = distributed.weighted_mean(
                    {"speed": running.examples_per_second()}, 1.0, ranks)["speed"] * ranks.world
                record = {"epoch": epoch, **{f"train_{k}": v for k, v in means.items()},
                          "examples_per_second": speed,
                          "learning_rate": optimizer.param_groups[0]["lr"],
                          "seconds": clock.elapsed()}
                valid = validation_metrics(pipeline, valid_data, cfg, ranks) \
                    if valid_data else None
                if valid:
                    record.update({f"valid_{k}": v for k, v in valid.items()})
                record["epoch_seconds"] = time.perf_counter() - epoch_started  # train + validate
                bar.finish(record)
                if ranks.main:
                    _append_jsonl(metrics_path, record)
                state["records"] += 1
                if on_epoch:
                    on_epoch(record)

                # --- keep the best
                best = state["best"]
                score = valid["loss"] if valid else -epoch  # without validation, the last
                accuracy = valid["accuracy"] if valid else -math.inf
                state["stalled"] = 0 if not valid or improved(score, accuracy, best) \
                    else state["stalled"] + 1
                best["accuracy"] = max(best["accuracy"], accuracy)
                if score < best["loss"]:
                    best.update(loss=score, epoch=epoch, metrics=record,
                                state=copy.deepcopy(model.state_dict()))
                    if on_best and ranks.main:
                        on_best(epoch)
                stop_now = distributed.any_rank(stop.requested, ranks)
                ending = bool(patience and state["stalled"] >= patience) or out_of_time \
                    or epoch == epochs
                state["finished"] = ending and not stop_now
                save_checkpoint(epoch + 1, 0, None)
                if stop_now:
                    raise KeyboardInterrupt
                if ending:
                    break
        except KeyboardInterrupt:
            interrupted = not state["finished"]
        finally:
            bar.close()
            writer.wait()  # the last checkpoint is on disk before train() returns

    # --- restore the best
    best = state["best"]
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    epochs_run = state["epochs_run"]
    return {"epochs": epochs_run, "best_epoch": best["epoch"], "best": best["metrics"],
            "seconds": round(clock.elapsed(), 2), "interrupted": interrupted,
            "stopped_early": epochs_run < epochs and not interrupted,
            "data_share": round(prepare_seconds / step_seconds, 4), "steps": state["step"]}


def fresh_state() -> dict:
    """What a checkpoint holds besides module and random states, at the start of a run."""
    return {"epoch": 1, "position": 0, "step": 0, "order_rng": None, "running": None,
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
    return {key: saved[key] for key in fresh_state()}


def random_states(generator: torch.Generator, device: torch.device) -> dict:
    """This process's random states: torch's CPU (and CUDA) generators and the augmentation
    generator. The batch order's generator is in the loop state, as of the epoch's start."""
    return {"torch": torch.get_rng_state(), "augment": generator.get_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_modules(saved: dict, ranks: Ranks, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, scaler,
                    generator: torch.Generator) -> None:
    """Load a checkpoint's module, optimizer, scheduler, scaler and random states."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    rng = saved["rngs"][ranks.rank]
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["augment"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"], torch.cuda.current_device())


def wrap_distributed(model: torch.nn.Module, data: EncodedTable, pipeline: Pipeline,
                     ranks: Ranks) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under torchrun (itself otherwise).

    When an input can be missing from every row of a batch (missing values, or modality
    dropout), its encoder takes no part in that step; DDP is then told to look for unused
    parameters instead of waiting for their gradients forever.
    """
    if not ranks.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    can_miss = any((col.index == MISSING).any() for col in data.inputs.values()) or any(
        i.modality_dropout for i in pipeline.config.inputs)
    device = pipeline.device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=can_miss)


def _append_jsonl(path: Path | None, record: dict) -> None:
    if path is None:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({k: round(v, 6) if isinstance(v, float) else v
                            for k, v in record.items()}) + "\n")
