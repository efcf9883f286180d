"""The one preprocess -> forward -> postprocess pipeline.

Training, evaluation, ``mmfuse predict`` and the Python API all go through :class:`Pipeline`, so
an input is turned into tensors, run through the model and turned back into labels the same way
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import Config
from .data.sampler import sequential_batches
from .data.table import Table
from .modalities import (
    Column,
    Preprocessor,
    build_input_preprocessor,
    build_output_preprocessor,
)
from .model import MultimodalModel


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
        return self.inputs[best[1]].index if best and best[0] >= 2.0 else None


class Pipeline:
    """Preprocessors for every input and output, and the model between them."""

    def __init__(self, config: Config, inputs: dict[str, Preprocessor],
                 outputs: dict[str, Preprocessor], model: MultimodalModel | None = None) -> None:
        self.config = config
        self.inputs = inputs
        self.outputs = outputs
        self.model = model

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
            columns[name].is_file = prep.is_file
        targets = {}
        for name, prep in self.outputs.items():
            targets[name] = prep.fit_encode(table).index
        self.model = self.build_model()
        return EncodedTable(table, columns, targets)

    def build_model(self) -> MultimodalModel:
        """A fresh model sized by the fitted preprocessors."""
        specs = {name: prep.spec() for name, prep in self.inputs.items()}
        labels = {name: prep.labels for name, prep in self.outputs.items()}
        return MultimodalModel(self.config, specs, labels)

    def encode(self, table: Table, targets: bool = True) -> EncodedTable:
        """Preprocess a table with the fitted preprocessors (targets only when asked)."""
        columns = {}
        for name, prep in self.inputs.items():
            columns[name] = prep.encode(table)
            columns[name].is_file = prep.is_file
        labels = {name: prep.encode(table).index for name, prep in self.outputs.items()} \
            if targets else {}
        return EncodedTable(table, columns, labels)

    def batch(self, data: EncodedTable, rows: np.ndarray, train: bool = False,
              generator: torch.Generator | None = None) -> tuple[dict, dict]:
        """Model inputs and target tensors for the given rows."""
        generator = generator or torch.Generator().manual_seed(0)
        inputs = {name: prep.batch(data.inputs[name], rows, train, generator)
                  for name, prep in self.inputs.items()}
        targets = {name: torch.from_numpy(t[rows]) for name, t in data.targets.items()}
        return inputs, targets

    @torch.no_grad()
    def logits(self, data: EncodedTable, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Logits of every output for every row, in table order (model in eval mode)."""
        self.model.eval()
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.outputs}
        for rows in sequential_batches(len(data), batch_size):
            inputs, _ = self.batch(data, rows)
            for name, out in self.model(inputs).items():
                parts[name].append(out)
        return {name: torch.cat(p) for name, p in parts.items()}

    def postprocess(self, logits: dict[str, torch.Tensor]) -> list[dict]:
        """Per row: ``{output: {"prediction": ..., "probabilities": {...}}}``."""
        per_output = {name: self.model.heads[name].postprocess(out) for name, out in logits.items()}
        n = len(next(iter(per_output.values())))
        return [{name: rows[i] for name, rows in per_output.items()} for i in range(n)]

    def predict(self, table: Table, batch_size: int = 256) -> list[dict]:
        """Preprocess -> forward -> postprocess for every row of ``table``."""
        return self.postprocess(self.logits(self.encode(table, targets=False), batch_size))

    def state(self) -> dict:
        """Learned state of all preprocessors, as JSON-able data."""
        return {"inputs": {n: p.state() for n, p in self.inputs.items()},
                "outputs": {n: p.state() for n, p in self.outputs.items()}}

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state` into the preprocessors."""
        for group, preps in (("inputs", self.inputs), ("outputs", self.outputs)):
            for name, prep in preps.items():
                prep.load_state(state[group][name])
