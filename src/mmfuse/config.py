"""Pydantic models of the YAML config file; unknown keys and bad values are errors.

A config is validated completely before any data is read. Every error names the path of the bad
key, the bad value and what is allowed, e.g. ``training.epochz: unknown key (did you mean
'epochs'?); allowed keys: ...``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .config_base import StrictModel, did_you_mean
from .errors import ConfigError
from .registry import ENCODERS, FUSIONS, HEADS, Registry
from .tuning.space import TuneSection

DEFAULT_ENCODERS = {"image": "cnn", "text": "gru", "audio": "audio_cnn", "video": "frame_cnn"}


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
        raise ValueError(f"{registry.kind} {name!r}: " + "; ".join(_format_errors(exc))) from None
    return {"type": name, **options.model_dump()}


class ImageOptions(StrictModel):
    """Image preprocessing: decode, convert to RGB, resize, optional centre crop, normalise."""

    size: PositiveInt | tuple[PositiveInt, PositiveInt] = Field(
        64, description="resize to SIZE or (HEIGHT, WIDTH)")
    crop: PositiveInt | tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="centre crop after resizing")
    normalize: bool = Field(True, description="subtract mean / divide std of the training split")
    mean: tuple[float, float, float] | None = Field(
        None, description="fixed per-channel mean on the 0-1 scale, instead of the training "
        "split's (a pretrained encoder sets the one its weights were trained with)")
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        None, description="fixed per-channel std on the 0-1 scale (with mean)")
    flip_horizontal: float = Field(0.0, ge=0, le=1, description="augmentation: flip probability")
    pad_crop: int = Field(0, ge=0, description="augmentation: pad by N px, random crop back")

    @model_validator(mode="after")
    def _crop_fits(self) -> ImageOptions:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both, or neither to use the "
                             "training split's statistics")
        if self.crop is not None:
            size = (self.size, self.size) if isinstance(self.size, int) else self.size
            crop = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
            if crop[0] > size[0] or crop[1] > size[1]:
                raise ValueError(f"crop {self.crop} is larger than size {self.size}; "
                                 "use a crop no larger than the resized image")
        return self


class TextOptions(StrictModel):
    """Text preprocessing: a tokenizer fitted on the training split."""

    tokenizer: Literal["word", "pretrained"] | None = Field(
        None, description="'word' (fitted on training text) or the pretrained encoder's own"
    )
    lowercase: bool = True
    max_length: int = Field(32, gt=0)
    min_frequency: int = Field(1, ge=1)
    max_vocab: int | None = Field(None, gt=2)


class AudioOptions(StrictModel):
    """Audio preprocessing: decode, mix or keep channels, resample, trim/pad, frame, featurise."""

    sample_rate: PositiveInt = Field(16000, description="resample every file to this rate (Hz)")
    channels: PositiveInt = Field(
        1, description="1 mixes down to mono; N keeps N channels (mono is repeated)")
    max_seconds: float = Field(10.0, gt=0, description="longer clips are trimmed to this")
    features: Literal["log_mel", "mfcc", "waveform"] = "log_mel"
    window: Literal["hann", "hamming", "blackman", "rectangular"] = "hann"
    window_ms: float = Field(25.0, gt=0, description="analysis window length")
    hop_ms: float = Field(10.0, gt=0, description="step between windows")
    n_fft: PositiveInt | None = Field(None, description="FFT size; default: next power of two "
                                      "at or above the window length")
    n_mels: PositiveInt = 64
    n_mfcc: PositiveInt = 20
    fmin: float = Field(0.0, ge=0)
    fmax: float | None = Field(None, gt=0, description="default: half the sample rate")
    normalize: bool = Field(True, description="per-feature mean/std of the training split")
    clip_normalize: bool = Field(
        False, description="first remove each clip's own mean and std per feature over its "
        "frames (cepstral mean and variance normalisation: cancels gain and channel)")
    noise_snr_db: tuple[float, float] | None = Field(
        None, description="augmentation: white noise at an SNR drawn from [LOW, HIGH] dB")
    gain_db: float = Field(0.0, ge=0, description="augmentation: random gain within +-N dB")
    time_shift: float = Field(0.0, ge=0, description="augmentation: shift by up to N seconds")
    time_masks: int = Field(0, ge=0, description="augmentation: SpecAugment time masks")
    time_mask_frames: PositiveInt = Field(10, description="the widest time mask, in frames")
    freq_masks: int = Field(0, ge=0, description="augmentation: SpecAugment frequency masks")
    freq_mask_bins: PositiveInt = Field(8, description="the widest frequency mask, in bins")

    @model_validator(mode="after")
    def _consistent(self) -> AudioOptions:
        if self.hop_ms > self.window_ms:
            raise ValueError(f"hop_ms={self.hop_ms} is longer than window_ms={self.window_ms}; "
                             "frames would skip samples")
        nyquist = self.sample_rate / 2
        if self.fmax is not None and self.fmax > nyquist:
            raise ValueError(f"fmax={self.fmax} is above half the sample rate ({nyquist:g})")
        if self.fmin >= (self.fmax or nyquist):
            raise ValueError(f"fmin={self.fmin} must be below fmax")
        window = int(round(self.window_ms / 1000 * self.sample_rate))
        if self.n_fft is not None and self.n_fft < window:
            raise ValueError(f"n_fft={self.n_fft} is shorter than the {window}-sample window; "
                             "raise n_fft or shorten window_ms")
        if self.noise_snr_db is not None and self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError("noise_snr_db is [LOW, HIGH] with LOW <= HIGH")
        return self


class VideoOptions(ImageOptions):
    """Video preprocessing: decode, sample frames, then resize / crop / normalise like images."""

    frames: PositiveInt = Field(
        16, description="frames kept per clip (at most, with 'rate'); an event shorter than "
        "the gap between two kept frames can be missed")
    sampling: Literal["uniform", "rate"] = Field(
        "uniform", description="'uniform': FRAMES spread over the clip; 'rate': every 1/FPS s")
    fps: float | None = Field(None, gt=0, description="frames per second with sampling: rate")

    @model_validator(mode="after")
    def _rate_needs_fps(self) -> VideoOptions:
        if self.sampling == "rate" and self.fps is None:
            raise ValueError("sampling: rate needs fps (frames per second to keep)")
        return self


MODALITY_OPTIONS: dict[str, type[StrictModel]] = {
    "image": ImageOptions, "text": TextOptions, "audio": AudioOptions, "video": VideoOptions}


def encoder_modalities(builder: Any) -> tuple[str, ...]:
    """The input types an encoder accepts (``modalities``, else its one ``modality``)."""
    modalities = getattr(builder, "modalities", None)
    return tuple(modalities) if modalities else (builder.modality,)


class InputConfig(StrictModel):
    """One model input: a table column, its modality, preprocessing and encoder."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: Literal["image", "text", "audio", "video"]
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

    @model_validator(mode="after")
    def _resolve(self) -> InputConfig:
        if self.column is None:
            self.column = self.name
        self.encoder = resolve_component(ENCODERS, self.encoder, DEFAULT_ENCODERS[self.type])
        builder = ENCODERS.get(self.encoder["type"]).builder
        if self.type not in encoder_modalities(builder):
            raise ValueError(
                f"encoder {self.encoder['type']!r} takes "
                f"{' or '.join(encoder_modalities(builder))} inputs, not {self.type}")
        # a pretrained encoder's own preprocessing (size, mean, std) fills what is left out
        defaults = getattr(builder, "default_preprocess", None)
        preprocess = {**(defaults(self.encoder) if defaults else {}), **self.preprocess}
        try:
            options = MODALITY_OPTIONS[self.type].model_validate(preprocess)
        except ValidationError as exc:
            raise ValueError("preprocess: " + "; ".join(_format_errors(exc))) from None
        if self.type == "text":
            needed = getattr(builder, "tokenizer", "word")
            if options.tokenizer not in (None, needed):
                raise ValueError(f"preprocess.tokenizer: encoder {self.encoder['type']!r} needs "
                                 f"tokenizer {needed!r}, not {options.tokenizer!r}")
            options.tokenizer = needed
        self.preprocess = options.model_dump()
        return self


class TextTargetOptions(StrictModel):
    """Text output preprocessing: a tokenizer fitted on the training split's targets."""

    tokenizer: Literal["word", "char"] = Field(
        "word", description="'word': words, single digits, single CJK characters and "
        "punctuation; 'char': every character")
    lowercase: bool = False
    min_frequency: int = Field(1, ge=1, description="rarer tokens become [UNK]")
    max_vocab: int | None = Field(None, gt=4)


class OutputConfig(StrictModel):
    """One model output: a table column to predict and its head."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: Literal["category", "text"]
    column: str | None = None
    preprocess: dict[str, Any] = Field(
        default_factory=dict, description="text outputs: the output tokenizer's options")
    decoder: Literal["gru", "transformer"] | None = Field(
        None, description="text outputs: shorthand for head.decoder")
    head: dict[str, Any] = Field(default_factory=dict)
    loss_weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _resolve(self) -> OutputConfig:
        if self.column is None:
            self.column = self.name
        head = dict(self.head)
        if self.type != "text":
            for key in ("preprocess", "decoder"):
                if getattr(self, key):
                    raise ValueError(f"{key} applies to text outputs only; drop it from the "
                                     f"{self.type} output {self.name!r}")
        else:
            try:
                self.preprocess = TextTargetOptions.model_validate(self.preprocess).model_dump()
            except ValidationError as exc:
                raise ValueError("preprocess: " + "; ".join(_format_errors(exc))) from None
            if self.decoder is not None:
                if head.get("decoder", self.decoder) != self.decoder:
                    raise ValueError(f"decoder: {self.decoder!r} and head.decoder: "
                                     f"{head['decoder']!r} disagree; give one of them")
                head["decoder"] = self.decoder
        self.head = resolve_component(HEADS, {"type": self.type, **head})
        self.decoder = self.head.get("decoder")
        return self


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
        "nor the validation accuracy improved; 'auto': a tenth of the epochs, at least 5; "
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

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
        return value


def default_fusion(inputs: list[InputConfig]) -> str:
    """The fusion a config gets when it names none: ``film`` when a text input can condition an
    image encoded by ``cnn`` (the question rescales the CNN's channels, so it can ask about
    one object's colour or place; measured in ``benchmarks/results/default_fusion.md``), else
    ``concat``."""
    has_text = any(i.type == "text" for i in inputs)
    has_cnn_image = any(i.type == "image" and i.encoder["type"] == "cnn" for i in inputs)
    return "film" if has_text and has_cnn_image else "concat"


class Config(StrictModel):
    """A whole model: inputs -> encoders -> fusion -> heads, plus training settings."""

    inputs: list[InputConfig] = Field(min_length=1)
    fusion: Any = None
    outputs: list[OutputConfig] = Field(min_length=1)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tune: TuneSection = Field(
        None, description="mmfuse tune's search space, metric, sampler and pruner "
        "(tuning/space.py); other commands ignore it")

    @field_validator("fusion", mode="after")
    @classmethod
    def _resolve_fusion(cls, value: Any) -> dict | None:
        return None if value is None else resolve_component(FUSIONS, value, "concat")

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


# pydantic names the member of a union that failed (``epochs.constrained-int``); not a key
_UNION_MEMBER = re.compile(r"^(constrained-\w+|literal\[.*\]|int|float|str|bool|none|"
                           r"list\[.*\]|tuple\[.*\]|function-\w+\[.*\])$")


def _format_errors(exc: ValidationError) -> list[str]:
    """One line per bad key: its path, what is wrong (the reasons of a union's members joined
    with 'or') and the value given."""
    problems: dict[tuple[str, str], list[str]] = {}
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _UNION_MEMBER.match(str(p))]
        if err["type"] == "unknown_key":
            loc.append(err["ctx"]["key"])
            problems.setdefault((".".join(loc), ""), []).append(err["msg"])
            continue
        shown = err.get("input")
        value = "" if isinstance(shown, dict | list) or shown is None else f" (got {shown!r})"
        msg = err["msg"].removeprefix("Value error, ")
        problems.setdefault((".".join(loc) or "(top level)", value), []).append(msg)
    return [f"{where}: {' or '.join(msgs)}{value}" for (where, value), msgs in problems.items()]


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
        raise ConfigError(f"{origin} is invalid:\n  " + "\n  ".join(_format_errors(exc))) from None
