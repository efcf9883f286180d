"""The ``tune:`` section of a config: the search space, the metric and how to search it.

Each key under ``parameters`` is a dotted path into the config (``training.learning_rate``,
``fusion.type``, ``inputs.0.encoder.dim``; a number indexes a list) and each value a space::

    tune:
      metric: valid_accuracy            # a valid_* key of metrics.jsonl; default valid_loss
      parameters:
        training.learning_rate: {space: loguniform, low: 1.0e-4, high: 1.0e-2}
        fusion.type: {space: choice, values: [concat, gated]}
        inputs.0.encoder.dim: {space: int, low: 32, high: 128, step: 32}

Paths are checked against the resolved config (every option with its default), so a path
that names no key fails at load time with the keys available at that level. A trial's values
are written into the config as the user wrote it (:func:`apply_params`), so switching
``fusion.type`` does not carry the old fusion's resolved options along.
"""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..config_base import StrictModel, did_you_mean, format_errors

# the validation metrics training/loop.py writes to metrics.jsonl for every epoch
METRICS = ("valid_loss", "valid_accuracy")


class ChoiceSpace(StrictModel):
    """One of a list of values (any YAML value: numbers, strings, lists, mappings)."""

    space: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    def labels(self) -> list[Any]:
        """What Optuna samples: the values themselves when all are scalars, else their JSON
        text (Optuna's categorical values must be None, bool, int, float or str)."""
        if all(v is None or isinstance(v, bool | int | float | str) for v in self.values):
            return list(self.values)
        return [json.dumps(v, sort_keys=True) for v in self.values]

    def value(self, label: Any) -> Any:
        """The config value of a sampled label."""
        return self.values[self.labels().index(label)]


class _Range(StrictModel):
    """A numeric range ``[low, high]``; low must be below high."""

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class IntSpace(_Range):
    """An integer from ``low`` to ``high`` (inclusive) in steps of ``step``."""

    space: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)

    def grid(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


class FloatSpace(_Range):
    """A float drawn uniformly from ``[low, high]``."""

    space: Literal["float"]
    low: float
    high: float


class LogUniformSpace(_Range):
    """A positive float drawn uniformly on a log scale (learning rates, weight decay)."""

    space: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)


Space = ChoiceSpace | IntSpace | FloatSpace | LogUniformSpace
SPACES: dict[str, type[StrictModel]] = {
    "choice": ChoiceSpace, "int": IntSpace, "float": FloatSpace, "loguniform": LogUniformSpace}


class PrunerConfig(StrictModel):
    """Which trials stop early, judged on their per-epoch validation metric."""

    type: Literal["median", "hyperband", "none"] = Field(
        "median", description="'median': stop a trial whose best value so far is worse than "
        "the median of finished trials at the same epoch; 'hyperband': successive halving "
        "over brackets; 'none': train every trial to the end")
    startup_trials: int = Field(
        3, ge=0, description="median: finished trials needed before any trial is pruned")
    warmup_epochs: int = Field(
        1, ge=0, description="epochs every trial trains before it can be pruned (median; the "
        "smallest budget of hyperband)")


class TuneConfig(StrictModel):
    """The search: parameters, the metric to optimise, the sampler and the pruner."""

    parameters: dict[str, Space] = Field(min_length=1)
    metric: str = Field("valid_loss", description=f"one of {', '.join(METRICS)} (the "
                        "'valid_' prefix may be left out)")
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="default: minimize a loss or error, maximize anything else")
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = Field(0, description="the sampler's seed")
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)

    @field_validator("parameters", mode="before")
    @classmethod
    def _parse_spaces(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic reports the wrong type
        return {name: parse_space(name, spec) for name, spec in value.items()}

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        metric = value if value.startswith("valid_") else f"valid_{value}"
        if metric not in METRICS:
            raise ValueError(f"unknown metric {value!r}{did_you_mean(metric, list(METRICS))}; "
                             f"choose one of: {', '.join(METRICS)}")
        return metric

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolve(self) -> TuneConfig:
        if self.direction is None:
            self.direction = ("minimize" if self.metric.endswith(("loss", "error"))
                              else "maximize")
        if self.sampler == "grid":
            for name, space in self.parameters.items():
                if isinstance(space, FloatSpace | LogUniformSpace):
                    raise ValueError(f"sampler: grid needs a finite set of values, but "
                                     f"parameter {name!r} is a {space.space} range; make it "
                                     "{space: choice, values: [...]} or use sampler: tpe")
        return self

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter's values, for Optuna's grid sampler."""
        return {name: space.labels() if isinstance(space, ChoiceSpace) else space.grid()
                for name, space in self.parameters.items()}


def parse_space(name: str, spec: Any) -> Space:
    """Validate one parameter's space, naming the parameter in every error."""
    if not isinstance(spec, dict):
        raise ValueError(f"parameters.{name}: expected a mapping such as "
                         "{space: choice, values: [a, b]}, got " + repr(spec))
    kind = spec.get("space")
    if kind is None:
        raise ValueError(f"parameters.{name}: missing 'space'; choose one of: "
                         f"{', '.join(SPACES)}")
    if kind not in SPACES:
        raise ValueError(f"parameters.{name}: unknown space {kind!r}"
                         f"{did_you_mean(str(kind), list(SPACES))}; "
                         f"choose one of: {', '.join(SPACES)}")
    try:
        return SPACES[kind].model_validate(spec)
    except ValidationError as exc:
        raise ValueError(f"parameters.{name}: " + "; ".join(format_errors(exc))) from None


def check_paths(tune: TuneConfig | None, info: ValidationInfo) -> TuneConfig | None:
    """Check that every parameter path names a key of the (validated) rest of the config."""
    if tune is None:
        return tune
    from ..config import Config

    config = {key: _plain(value, key, info.data) for key, value in info.data.items()}
    for path in tune.parameters:
        root = path.split(".")[0]
        if root in Config.model_fields and root not in config:
            continue  # that section failed validation; its own error is reported
        if root == "tune":
            raise ValueError(f"parameters.{path}: tune: cannot tune itself")
        find_key(config, path)
    return tune


TuneSection = Annotated[TuneConfig | None, AfterValidator(check_paths)]
"""The type of ``Config.tune``: a :class:`TuneConfig` whose paths exist in the config."""


def _plain(value: Any, key: str, data: dict) -> Any:
    """A validated section as plain data; the fusion a config leaves out is its default."""
    if key == "fusion" and value is None and "inputs" in data:
        from ..config import FUSIONS, default_fusion, resolve_component

        return resolve_component(FUSIONS, default_fusion(data["inputs"]))
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(v, "", data) for v in value]
    return value


def find_key(config: Any, path: str) -> Any:
    """The value at a dotted ``path`` of ``config``; a ValueError names the first step that
    does not exist and the keys (or indices) available there."""
    node, walked = config, []
    for step in path.split("."):
        where = ".".join(walked) or "the top level"
        if isinstance(node, dict):
            if step not in node:
                keys = [str(k) for k in node]
                raise ValueError(f"parameters.{path}: no key {step!r} at {where}"
                                 f"{did_you_mean(step, keys)}; keys there: {', '.join(keys)}")
            node = node[step]
        elif isinstance(node, list):
            if not step.isdigit() or int(step) >= len(node):
                raise ValueError(f"parameters.{path}: {where} is a list of {len(node)}; "
                                 f"use an index from 0 to {len(node) - 1}, not {step!r}")
            node = node[int(step)]
        else:
            raise ValueError(f"parameters.{path}: {where} is a value ({node!r}), "
                             f"not a section with key {step!r}")
        walked.append(step)
    return node


def apply_params(raw: dict, params: dict[str, Any], resolved: dict) -> dict:
    """A copy of the user's config ``raw`` with each dotted path set to its value.

    Sections that ``raw`` leaves out are created; where the resolved config names a component
    there (``{type: ...}``), the new section starts with that type, so ``fusion.hidden`` on a
    config without ``fusion:`` tunes the default fusion instead of switching to another.
    """
    out = copy.deepcopy(raw)
    for path, value in params.items():
        steps = path.split(".")
        node, ref = out, resolved
        for step in steps[:-1]:
            key: Any = int(step) if isinstance(node, list) else step
            ref = ref[key] if ref is not None else None
            child = node[key] if isinstance(node, list) else node.get(key)
            if child is None or isinstance(child, str):  # absent, or `encoder: cnn` shorthand
                kind = child or (ref.get("type") if isinstance(ref, dict) else None)
                child = {"type": kind} if kind else {}
                node[key] = child
            node = child
        last = steps[-1]
        node[int(last) if isinstance(node, list) else last] = value
    return out

