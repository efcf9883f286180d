"""The model behind the server: describe it, and run batches of decoded requests.

A :class:`Service` holds a loaded :class:`~mmfuse.api.Model` (PyTorch, or an ONNX export run
by onnxruntime) and runs the same pipeline as ``mmfuse predict``: the rows of all jobs in a
batch are encoded together (:meth:`Pipeline.encode_values`), run through the model, and
postprocessed into ``{output: {"prediction": ..., "probabilities": {...}}}`` per row.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..modalities.kind import modality
from .inputs import Prepared, RowChecker
from .openapi import openapi_schema

if TYPE_CHECKING:  # the server only reads a loaded model: importing api would load training
    from ..api import Model
    from .settings import Limits


class Service:
    """A loaded model with its request checker."""

    def __init__(self, model: Model, limits: Limits, runtime: str = "torch",
                 source: str = "") -> None:
        self.model = model
        self.limits = limits
        self.runtime = runtime
        self.source = source
        self.checker = RowChecker(model.config, model.pipeline, limits)

    def prepare(self, rows: list[dict], prefix: str = "") -> Prepared:
        """Check and decode request rows (runs in a worker thread)."""
        started = time.perf_counter()
        prepared = self.checker.prepare(rows, prefix)
        prepared.seconds = time.perf_counter() - started
        return prepared

    def run(self, jobs: list[Prepared]) -> list[list[dict]]:
        """Outputs of every row of every job, from one forward pass over all their rows."""
        pipeline = self.model.pipeline
        names = list(pipeline.inputs)
        values = {name: [v for job in jobs for v in job.values[name]] for name in names}
        total = sum(job.rows for job in jobs)
        outputs = pipeline.postprocess(pipeline.logits(pipeline.encode_values(values),
                                                       batch_size=max(1, total)))
        results, start = [], 0
        for job in jobs:
            results.append(outputs[start:start + job.rows])
            start += job.rows
        return results

    def describe(self) -> dict:
        """``GET /v1/model``: inputs with their types, the kind of value a request sends
        (``value``: text, file, number, category or binary) and its limits; outputs with their
        types and what their heads say (labels, threshold, vocabulary size...)."""
        config, pipeline = self.model.config, self.model.pipeline
        inputs = []
        for spec in config.inputs:
            kind = modality(spec.type)
            inputs.append({"name": spec.name, "type": spec.type, "encoder": spec.encoder["type"],
                           "value": kind.value, "required": spec.name not in self.checker.optional,
                           **kind.limits(self.limits), **kind.describe(pipeline.inputs[spec.name])})
        outputs = [{"name": o.name, "type": o.type,
                    "served_by": "predictor" if o.predictor and o.use == "predictor"
                    else "head",
                    **pipeline.model.heads[o.name].describe()} for o in config.outputs]
        return {"source": self.source, "runtime": self.runtime, "inputs": inputs,
                "outputs": outputs,
                "limits": {"max_body_bytes": self.limits.max_body_bytes,
                           "max_batch_rows": self.limits.max_batch_rows}}

    def openapi(self, secured: bool = False) -> dict:
        """``GET /openapi.json``: the OpenAPI schema of this model's routes and fields."""
        return openapi_schema(self, secured)
