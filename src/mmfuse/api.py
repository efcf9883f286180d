"""The Python API: ``Model.from_config(...).fit(...)``, ``.evaluate``, ``.predict``, ``.save``.

Example:
    >>> model = mmfuse.Model.from_config("examples/sort_of_clevr.yaml")
    >>> model.fit("data/soc/train.csv", out="runs/soc")
    >>> model.evaluate("data/soc/test.csv", by="qtype")["outputs"]["answer"]["accuracy"]
    >>> model.predict([{"image": "data/soc/images/test_00000.png",
    ...                 "question": "Is the red object on the left of the image?"}])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import write_text
from .bundle import bundle_file, load_bundle, save_bundle
from .config import Config, load_config
from .data.table import Table, as_table
from .encoders.base import weights_from_bundle
from .errors import DataError, MmfuseError
from .modalities.kind import modality
from .model import FUSED
from .pipeline import EncodedTable, Pipeline
from .threads import available_cpus, configure_threads
from .training import checkpoint, distributed
from .training.after import check_predictor_targets, finish
from .device import resolve_device, resolve_precision
from .training.loop import train
from .training.metrics import evaluate_outputs
from .predictors import Predictor

TableLike = str | Path | list[dict] | Table


class Model:
    """A multimodal model: config, fitted preprocessors and weights, behind one pipeline."""

    def __init__(self, config: Config, pipeline: Pipeline | None = None) -> None:
        self.config = config
        self.pipeline = pipeline or Pipeline.from_config(config)
        self.history: dict = {}

    @classmethod
    def from_config(cls, source: str | Path | dict) -> Model:
        """A new, untrained model from a YAML path or a dict (validated before any data)."""
        return cls(load_config(source))

    @property
    def fitted(self) -> bool:
        return self.pipeline.model is not None

    def fit(self, train_data: TableLike, valid: TableLike | None = None, *,
            out: str | Path | None = None, data_root: str | Path | None = None,
            threads: int | None = None, progress: bool = False,
            on_epoch: Callable[[dict], None] | None = None, device: str | None = None,
            resume: bool = False, overwrite: bool = False) -> dict:
        """Fit preprocessors on the training split, train, and keep the best weights.

        Under torchrun (``mmfuse train --nproc N``) every process calls this; they train one
        model together and only rank 0 writes ``out``.

        Args:
            train_data: training table (path) or rows.
            valid: validation table; without it ``training.valid_fraction`` of the training
                files (rows that share a file stay on one side) is held out.
            out: run directory: ``model/`` (best bundle, saved on each improvement),
                ``metrics.jsonl``, ``run.json`` and ``checkpoints/``.
            data_root: folder that relative paths start from (default: each table's folder).
            threads: torch threads (default: the CPUs this process may use, shared among the
                processes torchrun started on this machine).
            progress: show a progress bar.
            on_epoch: called with each epoch's metrics record (the line written to
                ``metrics.jsonl``); an exception it raises stops training and propagates.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; replaces ``training.device``.
            resume: continue the run in ``out`` from its last checkpoint (from the start when
                it has none yet); another config or other data is an error.
            overwrite: replace a run that ``out`` already holds (without it, or ``resume``,
                that is an error, so a rerun never replaces a good bundle by accident).

        Returns:
            The training summary (epochs, best epoch and metrics, seconds).
        """
        if device is not None:
            self.config.training = self.config.training.model_copy(update={"device": device})
        target = resolve_device(self.config.training.device)
        precision = resolve_precision(self.config.training.precision, target)
        cfg = self.config.training.model_copy(update={"precision": precision})
        ranks = distributed.setup(target)
        used_threads = configure_threads(threads or max(1, available_cpus() // ranks.local_world))
        run = Path(out) if out is not None else None
        if run is not None:
            checkpoint.check_run_folder(run, resume, overwrite)
        table = as_table(train_data, data_root)
        held_out: list[int] = []
        if valid is not None:
            valid_table: Table | None = as_table(valid, data_root)
        elif cfg.valid_fraction > 0:
            table, valid_table, held_out = self._hold_out(table)
        else:
            valid_table = None
        fingerprint = {"config": self.config.model_dump(mode="json"), "data": {
            "train": checkpoint.table_digest(table.rows),
            "valid": checkpoint.table_digest(valid_table.rows) if valid_table else None}}
        saved = None
        if run is not None and resume:
            if (run / "run.json").is_file():
                checkpoint.check_same_run(json.loads((run / "run.json").read_text()),
                                          fingerprint, run)
            saved = checkpoint.load_latest(run)
        self.pipeline = Pipeline.from_config(self.config)
        torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
        with distributed.main_first(ranks):  # rank 0 fills the decode cache, the rest read it
            train_encoded = self.pipeline.fit(table)
            valid_encoded = self.pipeline.encode(valid_table) if valid_table is not None \
                else None
        check_predictor_targets(self.pipeline, train_encoded)
        self.pipeline.to(target)
        if run is not None and ranks.main:  # the data is read: replace the old run now
            if overwrite:
                checkpoint.clear_run(run)
            run.mkdir(parents=True, exist_ok=True)
            if saved is None:
                (run / "metrics.jsonl").unlink(missing_ok=True)
            write_text(run / "run.json", json.dumps({
                "train": str(Path(train_data).resolve()) if isinstance(train_data, str | Path)
                else None,
                "valid": str(Path(valid).resolve()) if isinstance(valid, str | Path) else None,
                "held_out_rows": held_out, "data_root": str(data_root) if data_root else None,
                "threads": used_threads, "processes": ranks.world, "device": str(target),
                **fingerprint}, indent=1))
        summary = train(
            self.pipeline, train_encoded, valid_encoded, cfg,
            metrics_path=run / "metrics.jsonl" if run else None,
            on_best=(lambda epoch: self.save(run / "model")) if run else None,
            progress=progress, on_epoch=on_epoch, run=run, resume=saved, ranks=ranks,
        )
        # on the best weights: calibration on validation, then the classic predictors
        summary.update(finish(self.pipeline, train_encoded, valid_encoded,
                              cfg.eval_batch_size or cfg.batch_size, cfg.seed))
        if run is not None and ranks.main:
            self.save(run / "model")  # the best weights, restored by train()
        distributed.barrier(ranks)
        summary.update(threads=used_threads, train_rows=len(table), processes=ranks.world,
                       device=str(target), resumed=saved is not None,
                       valid_rows=len(valid_table) if valid_table is not None else 0)
        self.history = summary
        return summary

    def to(self, device: str | torch.device = "auto") -> Model:
        """Run the model on ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``)."""
        self._require_fitted()
        self.pipeline.to(resolve_device(device))
        return self

    def _hold_out(self, table: Table) -> tuple[Table, Table, list[int]]:
        """Split off ``valid_fraction`` of the rows; rows that share a file stay together."""
        fraction, seed = self.config.training.valid_fraction, self.config.training.seed
        file_columns = [i.column for i in self.config.inputs if modality(i.type).value == "file"]
        keys = [f"{row.get(file_columns[0])}" if file_columns and row.get(file_columns[0])
                else f"\0{i}" for i, row in enumerate(table.rows)]
        unique = sorted(set(keys))
        rng = np.random.default_rng(seed)
        n_valid = max(1, round(fraction * len(unique)))
        if n_valid >= len(unique):
            raise DataError(f"{table.source}: too few rows to hold out {fraction:.0%} for "
                            "validation; pass --valid or set training.valid_fraction: 0")
        chosen = {unique[i] for i in rng.choice(len(unique), n_valid, replace=False)}
        valid_rows = [i for i, k in enumerate(keys) if k in chosen]
        train_rows = [i for i, k in enumerate(keys) if k not in chosen]
        return table.subset(train_rows), table.subset(valid_rows), valid_rows

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise MmfuseError("the model is not trained yet; call fit() or Model.load() first")

    def evaluate(self, data: TableLike, by: str | None = None,
                 data_root: str | Path | None = None, batch_size: int = 256,
                 drop: list[str] | None = None) -> dict:
        """Metrics on a labelled table: ``{"n", "outputs", "groups"?}`` (groups when ``by``).

        Args:
            drop: inputs to remove from every row, to measure how the model copes without them.
        """
        self._require_fitted()
        table = as_table(data, data_root)
        encoded: EncodedTable = self.pipeline.encode(table)
        if drop:
            encoded = self.pipeline.without(encoded, drop)
        result = self.evaluate_encoded(encoded, by, batch_size)
        if drop:
            result["dropped"] = list(drop)
        return result

    def evaluate_encoded(self, encoded: EncodedTable, by: str | None = None,
                         batch_size: int = 256, outputs: dict | None = None) -> dict:
        """:meth:`evaluate` on a table the pipeline has already encoded (with targets), so
        callers that alter its columns (``mmfuse explain``'s drop and permute) decode once.

        An output with a classic predictor is reported twice: what predict serves under
        ``outputs`` (the predictor, or the head with ``use: head``), the other under ``heads``
        (the head it replaces) or ``predictors`` (the predictor fitted but not served).

        Args:
            outputs: ``pipeline.logits(encoded)`` when the caller has it already (``mmfuse
                report`` keeps it for its plots), so the model does not run twice.
        """
        self._require_fitted()
        pipeline, table = self.pipeline, encoded.table
        groups = [str(v) for v in table.column(by)] if by else None
        predictors = pipeline.predictors
        if outputs is None or predictors:
            raw = pipeline.logits(encoded, batch_size, fused=bool(predictors), predictors=False)
            answers = {name: p.outputs(raw[FUSED].numpy()) for name, p in predictors.items()}
            outputs = {**{n: v for n, v in raw.items() if n != FUSED},
                       **{n: answers[n] for n in pipeline.served}}
        teachers = [n for n, h in pipeline.model.heads.items() if getattr(h, "needs_teacher",
                                                                           False)]
        teacher = pipeline.logits(encoded, batch_size, teacher=True) if teachers else {}

        def scorer(name: str, out) -> object:
            prep = pipeline.outputs[name]
            extra = {"teacher": teacher[name]} if name in teachers else {}
            return pipeline.model.heads[name].scorer(out, encoded.targets[name],
                                                     table.column(prep.column), prep, **extra)

        scorers = {name: scorer(name, outputs[name]) for name in pipeline.outputs}
        sections = {
            "heads": {n: scorer(n, raw[n]) for n in pipeline.served},
            "predictors": {n: scorer(n, answers[n]) for n in predictors
                           if n not in pipeline.served},
        } if predictors else None
        return evaluate_outputs(scorers, len(table), groups, sections)

    def predict(self, rows: TableLike, data_root: str | Path | None = None) -> list[dict]:
        """Predictions for rows keyed by input name (or column); file paths relative to cwd."""
        self._require_fitted()
        if isinstance(rows, list):
            rows = [self._by_column(r) for r in rows]
        return self.pipeline.predict(as_table(rows, data_root))

    def _by_column(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for spec in self.config.inputs:
            if spec.name in row and spec.column not in row:
                out[spec.column] = row[spec.name]
        return out

    def save(self, directory: str | Path) -> Path:
        """Write the bundle (config, preprocessors, weights, manifest) atomically."""
        self._require_fitted()
        extra = {f"predictors/{name}.skops": p.dumps()
                 for name, p in self.pipeline.predictors.items()}
        return save_bundle(directory, self.config.model_dump(mode="json"),
                           self.pipeline.state(), self.pipeline.model.state_dict(), extra)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Model:
        """Load a bundle (or the bundle inside a run directory), verifying its hashes, onto
        ``device`` (weights are stored device-free, so a bundle trained anywhere loads
        anywhere)."""
        config_data, state, weights = load_bundle(directory)
        config = load_config(config_data)
        pipeline = Pipeline.from_config(config)
        pipeline.load_state(state)
        with weights_from_bundle():  # pretrained encoders skip their weight files
            pipeline.model = pipeline.build_model()
        pipeline.model.load_state_dict(weights)
        # a bundle saved while training (the best epoch so far) has no predictor yet: its
        # heads serve until training ends and the final bundle is written
        fitted = state.get("predictors")  # absent from bundles older than this list
        for output in config.outputs:
            if output.predictor and (fitted is None or output.name in fitted):
                name = f"predictors/{output.name}.skops"
                pipeline.predictors[output.name] = Predictor.loads(
                    bundle_file(directory, name), output.type,
                    len(pipeline.outputs[output.name].target_spec().labels), name)
        pipeline.model.eval()
        pipeline.to(resolve_device(device))
        return cls(config, pipeline)

