"""The Python API: ``Model.from_config(...).fit(...)``, ``.evaluate``, ``.predict``, ``.save``.

Example:
    >>> model = mmfuse.Model.from_config("examples/sort_of_clevr.yaml")
    >>> model.fit("data/soc/train.csv", out="runs/soc")
    >>> model.evaluate("data/soc/test.csv", by="qtype")["outputs"]["answer"]["accuracy"]
    >>> model.predict([{"image": "data/soc/images/test_00000.png",
    ...                 "question": "Is the red object on the left of the image?"}])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .bundle import bundle_file, find_bundle, load_bundle, save_bundle
from .config import Config, load_config, upgrade_bundle_config
from .data.table import Table, as_table
from .device import resolve_device
from .encoders.base import weights_from_bundle
from .errors import MmfuseError
from .model import FUSED
from .outputs import output_type
from .pipeline import EncodedTable, Pipeline
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

        The stages (every config check first, before any data is read) are in
        ``training/recipe.py``.

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
        # the training recipe loads here, so that serving a model never loads the loop
        from .training.recipe import FitRequest, fit

        self.history = fit(self, FitRequest(
            train=train_data, valid=valid, out=Path(out) if out is not None else None,
            data_root=data_root, threads=threads, progress=progress, on_epoch=on_epoch,
            device=device, resume=resume, overwrite=overwrite))
        return self.history

    def to(self, device: str | torch.device = "auto") -> Model:
        """Run the model on ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``)."""
        self._require_fitted()
        self.pipeline.to(resolve_device(device))
        return self

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
        from .training.metrics import evaluate_outputs

        self._require_fitted()
        pipeline, table = self.pipeline, encoded.table
        groups = [str(v) for v in table.column(by)] if by else None
        predictors = pipeline.predictors
        if outputs is None or predictors:
            raw = pipeline.logits(encoded, batch_size, fused=bool(predictors), predictors=False)
            answers = {name: p.outputs(raw[FUSED].numpy()) for name, p in predictors.items()}
            outputs = {**{n: v for n, v in raw.items() if n != FUSED},
                       **{n: answers[n] for n in pipeline.served}}
        teachers = [n for n, h in pipeline.model.heads.items() if h.traits.needs_teacher]
        teacher = pipeline.logits(encoded, batch_size, teacher=True) if teachers else {}
        kinds = {o.name: output_type(o.type) for o in pipeline.config.outputs}

        def scorer(name: str, out) -> object:
            prep = pipeline.outputs[name]
            extra = {"teacher": teacher[name]} if name in teachers else {}
            return kinds[name].scorer(pipeline.model.heads[name], out, encoded.targets[name],
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
        for head in self.pipeline.model.heads.values():  # an embedded causal LM's files
            extra.update({path: file.read_bytes() for path, file in head.bundle_files().items()})
        return save_bundle(directory, self.config.model_dump(mode="json"),
                           self.pipeline.state(), self.pipeline.model.state_dict(), extra)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Model:
        """Load a bundle (or the bundle inside a run directory), verifying its hashes, onto
        ``device`` (weights are stored device-free, so a bundle trained anywhere loads
        anywhere)."""
        config_data, state, weights = load_bundle(directory)
        config = load_config(upgrade_bundle_config(config_data))
        pipeline = Pipeline.from_config(config)
        pipeline.load_state(state)
        # pretrained encoders skip their weight files; a causal LM reads its own or the
        # bundle's copy of them
        with weights_from_bundle(find_bundle(directory)):
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

