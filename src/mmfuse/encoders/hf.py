"""``hf_text`` and ``hf_image``: any local Hugging Face transformer as an encoder, loaded offline.

Wolf et al. 2020, "Transformers: State-of-the-Art Natural Language Processing". ``path`` is a
folder written by ``save_pretrained`` (``config.json`` and weights; ``tokenizer.json`` for text,
``preprocessor_config.json`` for images). It is loaded with ``AutoModel`` and
``local_files_only=True, trust_remote_code=False``: nothing is downloaded and no code from the
folder runs, so a model that needs its own code (``auto_map`` in ``config.json``, or a
``model_type`` this transformers does not know) is refused.

Validating the options reads the folder once and records the model's config (``hf_config``)
and, for images, its processor's settings (``image_processor``) in the resolved config, hence in
the bundle: a bundle builds the architecture from them and loads its own weights, without the
folder. The text tokenizer travels in the text preprocessor's state (``modalities/text.py``).

Shapes (D = ``hidden_size``):
    hf_text: ids ``[B, L]``, mask ``[B, L]`` -> tokens ``[B, L, D]`` (``last_hidden_state``,
        mask = the attention mask), pooled ``[B, D]``.
    hf_image: pixels ``[B, 3, H, W]`` -> tokens ``[B, N, D]`` (class token + patches, all
        real), pooled ``[B, D]``.

``pool: cls`` takes token 0 of ``last_hidden_state`` ([CLS] for BERT, the class token for
ViT and CLIP), before any model-specific pooler: BERT's tanh pooler was trained for next-sentence
prediction, ViT's is often untrained, and CLIP's ``pooler_output`` is token 0 after a final
layer norm, whose effect the fusion's first layer can mostly learn. Taking token 0 also makes the
pooled vector a function of the cached tokens (``from_frozen``). ``pool: mean`` averages the
real tokens (sentence encoders such as all-MiniLM were trained with it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..config_base import Options
from ..errors import ConfigError, require
from ..features import Features, all_present, masked_mean
from ..modalities.image import pair
from ..registry import ENCODERS
from ..specs import EncoderSpec, EncoderTraits
from .base import Encoder, reading_bundle

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PROCESSOR_KEYS = ("do_resize", "size", "do_center_crop", "crop_size", "do_rescale",
                  "rescale_factor", "do_normalize", "image_mean", "image_std", "resample")
LOAD = {"local_files_only": True, "trust_remote_code": False}


def _transformers():
    return require("transformers", "pretrained", "a Hugging Face encoder (hf_text, hf_image)")


def brief(exc: Exception, limit: int = 200) -> str:
    """An exception's message on one line, cut at ``limit`` characters (transformers' messages
    run to a paragraph)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


# --- reading a model folder (at config validation) -------------------------------------------


def read_model_config(folder: Path, modality: str) -> dict[str, Any]:
    """The HF config of the model saved in ``folder``, as a dict (``config.to_dict()``).

    Raises:
        ValueError: the folder is missing, holds no model, or its model needs remote code or is
            not a plain encoder; the message names the folder and the fix.
    """
    raw = _config_json(folder)
    if "auto_map" in raw:
        raise ValueError(
            f"path {str(folder)!r}: the model needs its own Python code (config.json has "
            f"auto_map: {raw['auto_map']}); mmfuse does not run code from a model folder "
            "(trust_remote_code=False): use a model whose architecture transformers ships")
    transformers = _transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if raw.get("model_type") not in CONFIG_MAPPING:
        raise ValueError(
            f"path {str(folder)!r}: config.json has model_type {raw.get('model_type')!r}, which "
            f"transformers {transformers.__version__} does not know, so it would need remote "
            "code; use a model type transformers ships, or upgrade transformers")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"path {str(folder)!r}: config.json but no weights (one of "
                         f"{', '.join(WEIGHT_FILES)}); save the model with save_pretrained()")
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), **LOAD)
    except (OSError, ValueError) as exc:
        raise ValueError(f"path {str(folder)!r}: config.json cannot be read: "
                         f"{brief(exc)}") from None
    _check_encoder(config, folder, modality)
    return config.to_dict()


def _config_json(folder: Path) -> dict:
    """``folder/config.json`` parsed, or a ValueError naming what is missing."""
    if not folder.is_dir():
        raise ValueError(f"path {str(folder)!r}: no such folder; give a local folder written "
                         "by save_pretrained() (nothing is downloaded)")
    file = folder / "config.json"
    if not file.is_file():
        raise ValueError(f"path {str(folder)!r}: no Hugging Face model here (no config.json); "
                         "give the folder written by model.save_pretrained()")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"path {str(folder)!r}: config.json is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"path {str(folder)!r}: config.json does not hold a JSON object")
    return raw


def _check_encoder(config: Any, folder: Path, modality: str) -> None:
    """Refuse models that AutoModel cannot build or that do not give one token sequence."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    kind = config.model_type
    if type(config) not in MODEL_MAPPING:
        raise ValueError(f"path {str(folder)!r}: AutoModel has no base model for model_type "
                         f"{kind!r}; use a model that AutoModel can build")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"path {str(folder)!r}: an encoder-decoder model ({kind}); save its "
                         "encoder alone with save_pretrained() and give that folder")
    part = "vision_config" if modality == "image" else "text_config"
    if hasattr(config, part) or not hasattr(config, "hidden_size"):
        raise ValueError(
            f"path {str(folder)!r}: a {kind} model, not a single {modality} transformer with a "
            f"hidden_size; for a two-tower model such as CLIP save the {modality} tower alone "
            f"(e.g. CLIP{'Vision' if modality == 'image' else 'Text'}Model.from_pretrained(...)"
            ".save_pretrained(folder))")


def read_image_processor(folder: Path) -> dict[str, Any]:
    """The settings of the folder's image processor that preprocessing needs."""
    fix = "save it there with image_processor.save_pretrained(folder)"
    if not (folder / "preprocessor_config.json").is_file():
        raise ValueError(f"path {str(folder)!r}: no image processor (preprocessor_config.json); "
                         + fix)
    transformers = _transformers()
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(str(folder), **LOAD)
    except (OSError, ValueError) as exc:
        raise ValueError(f"path {str(folder)!r}: the image processor cannot be loaded "
                         f"({brief(exc)}); {fix}") from None
    settings = processor.to_dict()
    return {key: settings[key] for key in PROCESSOR_KEYS if key in settings}


@dataclass(frozen=True)
class PretrainedTokenizer:
    """A model's fast tokenizer (``tokenizers.Tokenizer``) and its padding and unknown tokens."""

    tokenizer: Any
    pad_token: str | None
    unk_token: str | None


def load_tokenizer(folder: Path) -> PretrainedTokenizer:
    """The folder's tokenizer (``AutoTokenizer``, fast), without padding or truncation.

    Raises:
        ConfigError: the folder has no tokenizer, or only a slow one.
    """
    from tokenizers import Tokenizer

    fix = "save it next to the model with tokenizer.save_pretrained(folder)"
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ConfigError(f"path {str(folder)!r}: no tokenizer (tokenizer.json); {fix}")
    transformers = _transformers()
    try:
        loaded = transformers.AutoTokenizer.from_pretrained(str(folder), **LOAD)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"path {str(folder)!r}: the tokenizer cannot be loaded "
                          f"({brief(exc)}); {fix}") from None
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"path {str(folder)!r}: the tokenizer is not a fast one; save one "
                          "(tokenizer.json) with AutoTokenizer(..., use_fast=True)")
    tokenizer = Tokenizer.from_str(backend.to_str())  # a copy: truncation is set per input
    tokenizer.no_padding()  # batches pad to their longest text
    tokenizer.no_truncation()
    return PretrainedTokenizer(tokenizer, loaded.pad_token, loaded.unk_token)


# --- building the model ----------------------------------------------------------------------


def load_model(folder: Path, hf_config: dict[str, Any] | None) -> nn.Module:
    """``AutoModel`` from ``folder``; while a bundle is read, its architecture alone (from
    ``hf_config``, else the folder's config.json), as the bundle's weights replace it."""
    transformers = _transformers()
    try:
        if reading_bundle():
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING

            config = CONFIG_MAPPING[hf_config["model_type"]].from_dict(hf_config) \
                if hf_config else transformers.AutoConfig.from_pretrained(str(folder), **LOAD)
            return transformers.AutoModel.from_config(config, dtype=torch.float32)
        return transformers.AutoModel.from_pretrained(str(folder), dtype=torch.float32, **LOAD)
    except OSError as exc:
        raise ConfigError(f"path {str(folder)!r}: the model cannot be loaded: "
                          f"{brief(exc)}") from None


def preprocess_from_processor(processor: dict[str, Any], hf_config: dict[str, Any]) -> dict:
    """Image preprocessing (``ImageOptions`` keys) that feeds the model what its image
    processor would: its size and centre crop, and mean/std on mmfuse's 0-1 scale.

    The processor gives ``(x * rescale_factor - mean) / std`` for pixels ``x`` in 0..255 and
    mmfuse ``(x / 255 - m) / s``, so ``m = mean / k`` and ``s = std / k`` with
    ``k = 255 * rescale_factor``. A ``shortest_edge`` size becomes a square resize.
    """
    defaults: dict[str, Any] = {}
    size = _size(processor.get("size")) if processor.get("do_resize", True) else None
    size = size or _size(hf_config.get("image_size"))
    if size is not None:
        defaults["size"] = size
    crop = _size(processor.get("crop_size")) if processor.get("do_center_crop") else None
    if crop is not None:
        defaults["crop"] = crop
    scale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1
    mean, std = processor.get("image_mean"), processor.get("image_std")
    if not processor.get("do_normalize", True) or mean is None or std is None:
        mean, std = 0.0, 1.0
    k = 255 * scale
    return {**defaults, "normalize": True, "mean": tuple(m / k for m in _three(mean)),
            "std": tuple(s / k for s in _three(std))}


def _size(value: Any) -> int | tuple[int, int] | None:
    """A processor's size (int, [H, W], {height, width} or {shortest_edge}) as mmfuse's."""
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            value = (value["height"], value["width"])
        else:
            value = value.get("shortest_edge")
    if isinstance(value, list | tuple):
        return int(value[0]) if value[0] == value[1] else (int(value[0]), int(value[1]))
    return int(value) if isinstance(value, int | float) else None


def _three(value: float | list[float]) -> list[float]:
    return [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]


# --- options and encoders --------------------------------------------------------------------


class HFOptions(Options):
    path: str = Field(description="local folder written by save_pretrained()")
    pool: Literal["cls", "mean"] = Field(
        "mean", description="'cls': token 0 of last_hidden_state; 'mean': the real tokens' mean")
    freeze: bool = Field(True, description="no gradients; the model stays in eval mode")
    hf_config: dict[str, Any] | None = Field(
        None, description="the model's config.json, recorded from the folder at validation so "
        "that a bundle builds without it; leave it out")

    modality: ClassVar[str] = "text"

    @model_validator(mode="after")
    def _read_folder(self) -> HFOptions:
        if self.hf_config is None:  # a fresh config; a resolved one (a bundle's) has it
            folder = Path(self.path).expanduser()
            self.hf_config = read_model_config(folder, self.modality)
            self._read_extras(folder)
        return self

    def _read_extras(self, folder: Path) -> None:
        """Check or record what else the modality needs from the folder."""


class HFTextOptions(HFOptions):
    def _read_extras(self, folder: Path) -> None:
        try:
            load_tokenizer(folder)  # fail at validation, before any data is read
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class HFImageOptions(HFOptions):
    pool: Literal["cls", "mean"] = Field(
        "cls", description="'cls': token 0 of last_hidden_state; 'mean': the tokens' mean")
    image_processor: dict[str, Any] | None = Field(
        None, description="the image processor's size, crop, rescale, mean and std, recorded "
        "from the folder at validation; leave it out")

    modality: ClassVar[str] = "image"

    def _read_extras(self, folder: Path) -> None:
        if self.image_processor is None:
            self.image_processor = read_image_processor(folder)


class HFEncoder(Encoder):
    """What hf_text and hf_image share: the model at ``self.model``, freezing and pooling."""

    @classmethod
    def cacheable_with(cls, options: HFOptions) -> bool:
        return options.freeze

    @classmethod
    def frozen_with(cls, options: HFOptions) -> bool:
        return options.freeze

    def __init__(self, options: HFOptions, spec: EncoderSpec) -> None:
        super().__init__(spec)
        self.model = load_model(Path(options.path).expanduser(), options.hf_config)
        self.freeze = options.freeze
        # frozen weights in eval mode: ``frozen_features`` is the same every epoch
        # HFEncoder's own rule: a subclass (minilm) maps its options to these HF options
        self.traits = replace(self.traits, cacheable=HFEncoder.cacheable_with(options))
        self.pool = options.pool
        self.model.requires_grad_(not options.freeze)
        self.token_dim = self.pooled_dim = self.model.config.hidden_size
        self.token_features = nn.Identity()  # explain: attributions are taken here

    def pretrained_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def train(self, mode: bool = True) -> HFEncoder:
        super().train(mode)
        if self.freeze:
            self.model.eval()  # a frozen encoder keeps dropout off while the rest trains
        return self

    def _last_hidden_state(self, **inputs: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(not self.freeze and torch.is_grad_enabled()):
            return self.model(**inputs).last_hidden_state

    def _features(self, tokens: torch.Tensor, mask: torch.Tensor) -> Features:
        tokens = self.token_features(tokens)
        pooled = tokens[:, 0] if self.pool == "cls" else masked_mean(tokens, mask)
        return Features(tokens, mask, pooled, all_present(tokens.shape[0], tokens.device))


@ENCODERS.register("hf_text", HFTextOptions)
class HFTextEncoder(HFEncoder):
    """Any local Hugging Face text transformer (BERT, RoBERTa, ...) with its own tokenizer.

    ``tokenizer = "pretrained"``: the text preprocessor calls :meth:`load_tokenizer` when it is
    fitted, and keeps the tokenizer in its state.
    """

    traits = EncoderTraits(modalities=("text",))
    tokenizer = "pretrained"

    @classmethod
    def load_tokenizer(cls, encoder: dict) -> PretrainedTokenizer:
        """The tokenizer of the resolved encoder ``encoder`` (the text preprocessor's)."""
        return load_tokenizer(Path(encoder["path"]).expanduser())

    def frozen_features(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self._last_hidden_state(input_ids=ids, attention_mask=mask.long())
        return {"tokens": tokens, "mask": mask}

    def from_frozen(self, tokens: torch.Tensor, mask: torch.Tensor) -> Features:
        return self._features(tokens, mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> Features:
        return self.from_frozen(**self.frozen_features(ids, mask))


@ENCODERS.register("hf_image", HFImageOptions)
class HFImageEncoder(HFEncoder):
    """Any local Hugging Face vision transformer (ViT, DeiT, DINOv2, CLIP vision, ...)."""

    traits = EncoderTraits(modalities=("image",))

    def __init__(self, options: HFOptions, spec: EncoderSpec) -> None:
        super().__init__(options, spec)
        config = self.model.config
        patch = getattr(config, "patch_size", None) or getattr(
            getattr(config, "vision_config", None), "patch_size", None)
        size = spec.size
        # the patch grid (tokens after any class / register tokens), for explain's positions
        self.grid = (size[0] // pair(patch)[0], size[1] // pair(patch)[1]) \
            if patch and size else None

    @staticmethod
    def default_preprocess(encoder: dict) -> dict:
        """The image processor's size, crop, mean and std (see ``preprocess_from_processor``)."""
        return preprocess_from_processor(encoder["image_processor"] or {},
                                         encoder["hf_config"] or {})

    def frozen_features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"tokens": self._last_hidden_state(pixel_values=pixels)}

    def from_frozen(self, tokens: torch.Tensor) -> Features:
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return self._features(tokens, mask)

    def forward(self, pixels: torch.Tensor) -> Features:
        return self.from_frozen(**self.frozen_features(pixels))
