"""The model behind the server: describe it, and run batches of decoded requests.

A :class:`Service` holds a loaded :class:`~mmfuse.api.Model` (PyTorch, or an ONNX export run
by onnxruntime) and runs the same pipeline as ``mmfuse predict``: the rows of all jobs in a
batch are encoded together (:meth:`Pipeline.encode_values`), run through the model, and
postprocessed into ``{output: {"prediction": ..., "probabilities": {...}}}`` per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..heads.control import Control, controlled
from ..modalities.kind import modality
from ..outputs.text import EOS_ID, PAD_ID
from .inputs import Prepared, RowChecker
from .openapi import openapi_schema

if TYPE_CHECKING:  # the server only reads a loaded model: importing api would load training
    from ..api import Model
    from .settings import Limits


@dataclass
class Steering:
    """How one request's text output is generated (a chat request's parameters), who hears
    its tokens, and what it used.

    Attributes:
        output: the output whose head generates.
        options: updates of that head's options for this request.
        listener: called with (row of the request, new token) on the forward thread; True
            ends that row (its client left, or a stop string was written).
        usage: filled by :meth:`Service.run`: per row, (prompt tokens, generated tokens).
    """

    output: str
    options: dict[str, Any] = field(default_factory=dict)
    listener: Callable[[int, int], bool] | None = None
    usage: list[tuple[int, int]] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        """Requests that change nothing share passes with plain predictions."""
        if not self.options:
            return ()
        return (self.output, tuple(sorted((k, repr(v)) for k, v in self.options.items())))


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
        """Outputs of every row of every job, from one forward pass over all their rows (jobs
        of one batch share their :attr:`Prepared.key`, so one steering applies to all)."""
        pipeline = self.model.pipeline
        names = list(pipeline.inputs)
        values = {name: [v for job in jobs for v in job.values[name]] for name in names}
        total = sum(job.rows for job in jobs)
        control = self._control(jobs)
        with controlled(control):
            logits = pipeline.logits(pipeline.encode_values(values), batch_size=max(1, total))
            outputs = pipeline.postprocess(logits)
        if control is not None:
            self._usage(jobs, values, logits[control.output], control)
        results, start = [], 0
        for job in jobs:
            results.append(outputs[start:start + job.rows])
            start += job.rows
        return results

    def _control(self, jobs: list[Prepared]) -> Control | None:
        """The generation control of a batch with steered (chat) jobs; their keys are equal,
        so the first one's options hold for all."""
        steered = [job.steering for job in jobs if job.steering is not None]
        if not steered:
            return None
        head = self.model.pipeline.model.heads[steered[0].output]
        owners = []  # batch row -> (its job's steering or None, row within the job)
        for job in jobs:
            owners.extend((job.steering, r) for r in range(job.rows))

        def on_step(tokens: list[int | None]) -> set[int]:
            ended = set()
            for row, token in enumerate(tokens):
                steering, r = owners[row]
                if token is not None and steering is not None \
                        and steering.listener is not None and steering.listener(r, token):
                    ended.add(row)
            return ended

        listening = any(s.listener is not None for s in steered)
        return Control(head, steered[0].options, on_step if listening else None,
                       output=steered[0].output)

    def _usage(self, jobs: list[Prepared], values: dict, generated: Any,
               control: Control) -> None:
        """Per row of each job: the tokens its prompt held and the tokens it generated."""
        if isinstance(generated, dict) and "tokens" in generated:
            completions = [_written(row[0]) for row in generated["tokens"].tolist()]
        else:
            completions = [1] * sum(job.rows for job in jobs)
        prompts = control.prompt_tokens or self._text_tokens(values)
        start = 0
        for job in jobs:
            if job.steering is not None:
                job.steering.usage = [(prompts[start + r], completions[start + r])
                                      for r in range(job.rows)]
            start += job.rows

    def _text_tokens(self, values: dict) -> list[int]:
        """Per row, the tokens of its text inputs as the model's tokenizers read them."""
        pipeline, rows = self.model.pipeline, len(next(iter(values.values())))
        counts = [0] * rows
        for name, prep in pipeline.inputs.items():
            if modality(self.checker.types[name]).name != "text":
                continue
            for r, text in enumerate(values[name]):
                if text is not None:
                    counts[r] += int(prep.tokenize([text])[1][0])
        return counts

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


def _written(ids: list[int]) -> int:
    """Tokens a generated text holds before its end (``[EOS]``, or padding after a row that
    was ended from outside)."""
    for i, token in enumerate(ids):
        if token in (EOS_ID, PAD_ID):
            return i
    return len(ids)
