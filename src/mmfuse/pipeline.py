"""The one preprocess -> forward -> postprocess pipeline.

Training, evaluation, ``mmfuse predict`` and the Python API all go through :class:`Pipeline`, so
an input is turned into tensors, run through the model and turned back into labels the same way
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data.sampler import sequential_batches
from .data.table import Table
from .device import to_cpu, to_device
from .errors import DataError
from .modalities import (
    MISSING,
    Column,
    Preprocessor,
    build_input_preprocessor,
)
from .model import FUSED, MultimodalModel
from .outputs import build_output_preprocessor


@dataclass
class EncodedTable:
    """A table after preprocessing: one Column per input, one label array per output."""

    table: Table
    inputs: dict[str, Column]
    targets: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.table)

    def group_key(self) -> np.ndarray | None:
        """Per-row index of the most shared file input, or None when no file repeats."""
        shared = [(col.sharing, name) for name, col in self.inputs.items() if col.items is not None
                  and col.is_file]
        best = max(shared, default=None)
        if not best or best[0] < 2.0:
            return None
        index = self.inputs[best[1]].index
        # a row without the file is a group of its own, not one big group of missing rows
        return np.where(index == MISSING, -1 - np.arange(len(index)), index)


def concat(parts: list) -> torch.Tensor | dict:
    """Batches of one output joined along rows: tensors, or dicts of tensors (generated text).
    Tensors that differ past the row axis (texts of other lengths) are padded with zeros,
    which is ``[PAD]`` for token ids and a padded position for teacher-forced logits."""
    if isinstance(parts[0], dict):
        return {key: concat([p[key] for p in parts]) for key in parts[0]}
    shape = [max(sizes) for sizes in zip(*(p.shape for p in parts), strict=True)]
    padded = []
    for p in parts:
        pad = [x for d in reversed(range(1, p.dim())) for x in (0, shape[d] - p.shape[d])]
        padded.append(torch.nn.functional.pad(p, pad) if any(pad) else p)
    return torch.cat(padded)


class Pipeline:
    """Preprocessors for every input and output, and the model between them."""

    def __init__(self, config: Config, inputs: dict[str, Preprocessor],
                 outputs: dict[str, Preprocessor], model: MultimodalModel | None = None) -> None:
        self.config = config
        self.inputs = inputs
        self.outputs = outputs
        self.model = model
        self.device = torch.device("cpu")  # where the model runs; batches are moved there
        self.predictors: dict = {}  # output -> fitted classic predictor (training/predictors.py)

    @property
    def served(self) -> list[str]:
        """Outputs whose predictions come from their classic predictor (``use: predictor``)."""
        return [o.name for o in self.config.outputs
                if o.name in self.predictors and o.use == "predictor"]

    def to(self, device: torch.device) -> Pipeline:
        """Run the model on ``device`` (preprocessing stays on the CPU)."""
        self.device = device
        if self.model is not None:
            self.model.to(device)
        return self

    @classmethod
    def from_config(cls, config: Config) -> Pipeline:
        """Unfitted preprocessors for every input and output of ``config``."""
        inputs = {i.name: build_input_preprocessor(i) for i in config.inputs}
        outputs = {o.name: build_output_preprocessor(o) for o in config.outputs}
        return cls(config, inputs, outputs)

    def fit(self, table: Table) -> EncodedTable:
        """Fit the preprocessors on the training table, build the model, encode the table."""
        columns = {}
        for name, prep in self.inputs.items():
            columns[name] = prep.fit_encode(table)
        targets = {}
        for name, prep in self.outputs.items():
            prep.fit(table)
            targets[name] = prep.targets(table)
        self.model = self.build_model()
        return EncodedTable(table, columns, targets)

    def build_model(self) -> MultimodalModel:
        """A fresh model sized by the fitted preprocessors."""
        specs = {name: prep.spec() for name, prep in self.inputs.items()}
        targets = {name: prep.target_spec() for name, prep in self.outputs.items()}
        return MultimodalModel(self.config, specs, targets)

    def encode(self, table: Table, targets: bool = True) -> EncodedTable:
        """Preprocess a table with the fitted preprocessors (targets only when asked).

        Without targets (prediction) an input whose column is absent from every row is missing
        in every row; with targets (evaluation) an absent column is an error, since it is more
        often a misnamed column than a choice (``evaluate --drop`` removes an input on purpose).
        """
        columns = {}
        for name, prep in self.inputs.items():
            if not targets and not table.has_column(prep.column):
                # predicting without this input at all: every row misses it
                columns[name] = Column(None, np.full(len(table), MISSING, dtype=np.int64))
                continue
            columns[name] = prep.encode(table)
        labels = {name: prep.targets(table) for name, prep in self.outputs.items()} \
            if targets else {}
        return EncodedTable(table, columns, labels)

    def encode_values(self, values: dict[str, list]) -> EncodedTable:
        """Encode rows given as a list of values per input rather than as a table (the server's
        requests): strings for text, for file inputs what their preprocessor decoded; None, or
        an input left out of ``values``, is missing in that row."""
        n = len(next(iter(values.values())))
        columns = {}
        for name, prep in self.inputs.items():
            given = values.get(name, [None] * n)
            columns[name] = prep.column_of(given) if any(v is not None for v in given) \
                else Column(None, np.full(n, MISSING, dtype=np.int64))
        table = Table([{} for _ in range(n)], Path.cwd(), "request", restrict=False)
        return EncodedTable(table, columns, {})

    def batch(self, data: EncodedTable, rows: np.ndarray, train: bool = False,
              generator: torch.Generator | None = None) -> tuple[dict, dict]:
        """Model inputs and target tensors for the given rows, on the model's device."""
        inputs, targets = self.host_batch(data, rows, train, generator)
        return to_device(inputs, self.device), to_device(targets, self.device)

    def host_batch(self, data: EncodedTable, rows: np.ndarray, train: bool = False,
                   generator: torch.Generator | None = None) -> tuple[dict, dict]:
        """:meth:`batch` on the CPU (what a DataLoader worker hands the training process)."""
        generator = generator or torch.Generator().manual_seed(0)
        row_items = {name: column.index[rows] for name, column in data.inputs.items()}
        if train:
            row_items = self._drop_inputs(row_items, generator)
        inputs = {name: prep.batch(data.inputs[name], row_items[name], train, generator)
                  for name, prep in self.inputs.items()}
        targets = {name: self.outputs[name].target_tensor(t[rows])
                   for name, t in data.targets.items()}
        return inputs, targets

    def _drop_inputs(self, row_items: dict[str, np.ndarray],
                     generator: torch.Generator) -> dict[str, np.ndarray]:
        """Modality dropout: hide each input from a row with its ``modality_dropout``
        probability, so the model learns to answer from what is left; a row never loses its
        last input."""
        rates = {i.name: i.modality_dropout for i in self.config.inputs if i.modality_dropout}
        if not rates:
            return row_items
        dropped = dict(row_items)
        for name, rate in rates.items():
            hide = torch.rand(len(row_items[name]), generator=generator).numpy() < rate
            dropped[name] = np.where(hide, MISSING, row_items[name])
        names = list(row_items)
        left = np.stack([dropped[n] != MISSING for n in names]).any(0)
        if left.all():
            return dropped
        # a row that lost everything gets back one of the inputs it had, chosen at random
        had = np.stack([row_items[n] != MISSING for n in names], axis=1)  # [B, inputs]
        score = torch.rand(had.shape, generator=generator).numpy() + had
        back = np.argmax(score, axis=1)
        for i, name in enumerate(names):
            restore = ~left & (back == i)
            dropped[name] = np.where(restore, row_items[name], dropped[name])
        return dropped

    def without(self, data: EncodedTable, names: list[str]) -> EncodedTable:
        """``data`` with the inputs ``names`` removed from every row (``evaluate --drop``).

        Raises:
            DataError: a name is not an input of the model.
        """
        unknown = [n for n in names if n not in self.inputs]
        if unknown:
            raise DataError(f"cannot drop {', '.join(map(repr, unknown))}: not an input of this "
                            f"model; its inputs are: {', '.join(self.inputs)}")
        columns = {n: c.without_rows() if n in names else c for n, c in data.inputs.items()}
        return EncodedTable(data.table, columns, data.targets)

    @torch.no_grad()
    def logits(self, data: EncodedTable, batch_size: int = 256, teacher: bool = False,
               rows: np.ndarray | None = None, fused: bool = False,
               predictors: bool = True) -> dict:
        """Outputs of every output for every row (or for ``rows``), in table order (model in
        eval mode), on the CPU in fp32 whatever the device and autocast: logits of category
        outputs (and the head-space outputs of number, binary and set outputs); for text
        outputs the generated texts' ids and scores, or with ``teacher`` (which needs targets)
        the teacher-forced logits.

        Args:
            fused: also return the fused vectors, under :data:`~mmfuse.model.FUSED`.
            predictors: outputs served by a classic predictor get its answers (not with
                ``teacher``); False gives every head's own.
        """
        chosen = np.arange(len(data)) if rows is None else np.asarray(rows)
        if not len(chosen):
            return {}
        served = self.served if predictors and not teacher else []
        with_fused = fused or bool(served)
        if self.model.training:  # eval() walks every module: a small model's served batches
            self.model.eval()     # spent a tenth of their time there
        parts: dict[str, list] = {}
        for batch in sequential_batches(len(chosen), batch_size):
            inputs, targets = self.batch(data, chosen[batch])
            outputs = self.model(inputs, targets if teacher else None, fused=with_fused)
            for name, out in outputs.items():
                parts.setdefault(name, []).append(to_cpu(out))
        result = {name: concat(p) for name, p in parts.items()}
        for name in served:
            result[name] = self.predictors[name].outputs(result[FUSED].numpy())
        if not fused:
            result.pop(FUSED, None)
        return result

    def postprocess(self, logits: dict[str, torch.Tensor]) -> list[dict]:
        """Per row: ``{output: {"prediction": ..., "probabilities": {...}}}``."""
        per_output = {name: self.model.heads[name].postprocess(out) for name, out in logits.items()}
        n = len(next(iter(per_output.values())))
        return [{name: rows[i] for name, rows in per_output.items()} for i in range(n)]

    def predict(self, table: Table, batch_size: int = 256) -> list[dict]:
        """Preprocess -> forward -> postprocess for every row of ``table``."""
        return self.postprocess(self.logits(self.encode(table, targets=False), batch_size))

    def state(self) -> dict:
        """Learned state of all preprocessors, as JSON-able data, and which outputs have a
        fitted classic predictor (a bundle saved while training has none yet)."""
        return {"inputs": {n: p.state() for n, p in self.inputs.items()},
                "outputs": {n: p.state() for n, p in self.outputs.items()},
                "predictors": sorted(self.predictors)}

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state` into the preprocessors."""
        for group, preps in (("inputs", self.inputs), ("outputs", self.outputs)):
            for name, prep in preps.items():
                prep.load_state(state[group][name])
