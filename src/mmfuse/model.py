"""MultimodalModel: one encoder per input -> one fusion -> one head per output."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .config import Config
from .features import Placeholder, expand_rows
from .modalities.kind import modality
from .outputs import output_type
from .registry import ENCODERS, FUSIONS
from .specs import EncoderSpec, InputDims, TargetSpec

if TYPE_CHECKING:
    from .encoders.base import Encoder

FUSED = ".fused"  # the key of the fused vectors in forward's outputs (no output has a dot)


def input_dims(encoder: Encoder, input_type: str) -> InputDims:
    """What the fusion knows of one input: its encoder's widths and traits, its type's role."""
    kind = modality(input_type)
    return InputDims(token_dim=encoder.token_dim, pooled_dim=encoder.pooled_dim,
                     modality=encoder.modality, film_channels=encoder.film_channels,
                     token_positions=encoder.traits.token_positions, tabular=kind.tabular,
                     query=kind.query)


class MultimodalModel(nn.Module):
    """Encoders, fusion and heads built from a resolved config and the fitted preprocessors.

    Args:
        config: the validated config.
        input_specs: per input, what its preprocessor says the encoder needs (sizes, vocab).
        output_specs: per output, what its target preprocessor learned (labels, statistics).
    """

    def __init__(self, config: Config, input_specs: dict[str, EncoderSpec],
                 output_specs: dict[str, TargetSpec]) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(
            {i.name: ENCODERS.build(i.encoder, input_specs[i.name])
             for i in config.inputs}
        )
        self.placeholders = nn.ModuleDict(
            {i.name: Placeholder(self.encoders[i.name].token_dim,
                                 self.encoders[i.name].pooled_dim)
             for i in config.inputs if i.missing == "placeholder"})
        dims = {i.name: input_dims(self.encoders[i.name], i.type) for i in config.inputs}
        self.fusion = FUSIONS.build(config.fusion, dims)
        self.heads = nn.ModuleDict(
            {o.name: output_type(o.type).build_head(o, self.fusion.out_dim,
                                                    output_specs[o.name], dims)
             for o in config.outputs}
        )

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]],
                targets: dict[str, torch.Tensor] | None = None, fused: bool = False) -> dict:
        """Logits per output for a batch.

        A text head also reads the inputs' features: given ``targets`` it returns
        teacher-forced logits, without them the texts it generates.

        With ``fused``, the fused vectors ``[B, D]`` come too, under the key :data:`FUSED`.

        Each input's tensors hold its *unique* items plus ``index`` [B] mapping rows to them, so
        an image shared by many rows of the batch is encoded once. A serial fusion (FiLM) names a
        ``(target, source)`` pair: the target is encoded per row, modulated by the source.
        """
        features = self.features(inputs)
        vectors = self.fusion(features)
        out = {name: self._head(head, vectors, features, (targets or {}).get(name), inputs)
               for name, head in self.heads.items()}
        if fused:  # also the fused vectors, which classic predictors read
            out[FUSED] = vectors
        return out

    @staticmethod
    def _head(head: nn.Module, vectors: torch.Tensor, features: dict,
              target: torch.Tensor | None, inputs: dict):
        """One head's outputs: a generating head also reads the features and the target, and
        a causal LM the inputs' tensors (its text inputs' ids)."""
        if head.traits.reads_inputs:
            return head(vectors, features, target, inputs)
        return head(vectors, features, target) if head.traits.generates else head(vectors)

    def fuse(self, inputs: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        """The fused vector ``[B, D]`` of every row: what the heads (and the classic
        predictors of ``training/predictors.py``) read."""
        return self.fusion(self.features(inputs))

    def features(self, inputs: dict[str, dict[str, torch.Tensor]]) -> dict:
        """Every input's features per row (missing rows masked or filled in)."""
        target, source = self.fusion.traits.serial or (None, None)
        features = {}
        for name, encoder in self.encoders.items():
            if name != target:
                tensors = dict(inputs[name])
                index = tensors.pop("index")
                if "frozen" in tensors:  # cached frozen features (data/features.py)
                    items = encoder.from_frozen(**tensors["frozen"])
                else:
                    items = encoder(**tensors) if tensors else None
                features[name] = self._expand(name, items, index)
        if target is not None:
            features[target] = self._modulated(inputs[target], features[source], target)
        return features

    def _modulated(self, tensors: dict, source, target: str):
        """The FiLM target encoded per row, each row modulated by its own source features;
        rows that miss the target are masked out."""
        if torch.onnx.is_in_onnx_export():
            return self._modulated_dense(tensors, source, target)
        index = tensors["index"]
        present = index >= 0
        if not bool(present.any()):
            return self._expand(target, None, index)
        rows = index[present]
        per_row = {k: v[rows] for k, v in tensors.items() if k != "index"}
        film = self.fusion.modulation(source.select(present.nonzero().squeeze(1)))
        items = self.encoders[target](**per_row, film=film)
        order = torch.full_like(index, -1)
        order[present] = torch.arange(len(rows), device=index.device)
        return self._expand(target, items, order)

    def _modulated_dense(self, tensors: dict, source, target: str):
        """:meth:`_modulated` without shapes that depend on tensor values, for an exported graph:
        every row is encoded (a row without the target borrows item 0, and is masked out), so
        the rows that have the target get the same features. Not for training: the borrowed
        items would reach batch norm's statistics."""
        index = tensors["index"]
        per_row = {k: v[index.clamp(min=0)] for k, v in tensors.items() if k != "index"}
        items = self.encoders[target](**per_row, film=self.fusion.modulation(source))
        rows = torch.arange(index.shape[0], device=index.device)
        return self._expand(target, items, torch.where(index >= 0, rows, -1))

    def _expand(self, name: str, items, index: torch.Tensor):
        """Features of the unique items back to rows; missing rows (index -1) are masked out,
        or get the input's learned placeholder (``missing: placeholder``)."""
        encoder = self.encoders[name]
        features = expand_rows(items, index, encoder.token_dim, encoder.pooled_dim)
        if name in self.placeholders:
            features = self.placeholders[name](features)
        return features
