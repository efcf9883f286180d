"""The exported graph's inputs: every tensor of every model input under one flat name.

:class:`~mmfuse.model.MultimodalModel` takes a nested batch, ``{input: {"pixels": ...,
"index": ...}}``, as :meth:`Pipeline.batch <mmfuse.pipeline.Pipeline.batch>` builds it; an ONNX
graph takes named tensors. Graph input ``image.pixels`` is the ``pixels`` tensor of input
``image`` (its unique items) and ``image.index`` maps each row of the batch to one of them (-1:
the row misses the input). Axis 0 of an item tensor counts the items (``image.items``), an
``index`` counts the rows (``batch``), and text length and audio / video frames
(``question.tokens``, ``clip.frames``) vary from batch to batch; every other axis is fixed by the
preprocessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..errors import MmfuseError
from ..modalities.kind import modality
from ..model import FUSED


@dataclass(frozen=True)
class GraphInput:
    """One named input of the graph: tensor ``key`` of model input ``input``.

    ``shape`` holds a name (str) for every axis whose length varies, an int for the others.
    """

    name: str
    input: str
    key: str
    shape: list[int | str]
    dtype: str  # numpy dtype name: float32, int64 or bool

    def stand_in(self) -> np.ndarray:
        """One item for a batch where every row misses the input (the graph needs some): zeros,
        and masks True, so that every encoder output stays finite before the rows mask it."""
        shape = [1 if isinstance(n, str) else n for n in self.shape]
        return np.ones(shape, bool) if self.dtype == "bool" else np.zeros(shape, self.dtype)

    def as_dict(self) -> dict:
        return asdict(self)


def graph_inputs(config: Config, batch: dict[str, dict[str, torch.Tensor]]) -> list[GraphInput]:
    """The graph inputs of a model, read off a batch in which every input has items.

    Raises:
        MmfuseError: an input's preprocessor gives tensors that this exporter does not know.
    """
    out = []
    for spec in config.inputs:
        tensors = {k: v for k, v in batch[spec.name].items() if k != "index"}
        axes = modality(spec.type).variable_axes  # the tensors and their variable axes
        if list(tensors) != list(axes):
            raise MmfuseError(
                f"cannot export input {spec.name!r}: its {spec.type} preprocessor gives tensors "
                f"{list(tensors)}, but its modality declares {list(axes)} (variable_axes)")
        for key, tensor in tensors.items():
            shape: list[int | str] = [f"{spec.name}.items", *tensor.shape[1:]]
            for axis, what in axes[key].items():
                shape[axis] = f"{spec.name}.{what}"
            dtype = str(tensor.numpy().dtype)
            out.append(GraphInput(f"{spec.name}.{key}", spec.name, key, shape, dtype))
        out.append(GraphInput(f"{spec.name}.index", spec.name, "index", ["batch"], "int64"))
    return out


def flatten(inputs: list[GraphInput], batch: dict[str, dict[str, torch.Tensor]]
            ) -> dict[str, np.ndarray]:
    """The graph's feed for a batch of :meth:`Pipeline.batch`; an input that no row has gets
    one stand-in item, which every row's index (-1) leaves out."""
    feed = {}
    for graph_input in inputs:
        tensors = batch[graph_input.input]
        if graph_input.key in tensors:
            value = tensors[graph_input.key].numpy(force=True)
        elif bool((tensors["index"] < 0).all()):
            value = graph_input.stand_in()
        else:
            raise MmfuseError(f"the batch lacks tensor {graph_input.key!r} of input "
                              f"{graph_input.input!r}, which some of its rows have")
        feed[graph_input.name] = np.ascontiguousarray(value, dtype=graph_input.dtype)
    return feed


def nest(inputs: list[GraphInput], tensors: tuple[torch.Tensor, ...]
         ) -> dict[str, dict[str, torch.Tensor]]:
    """The model's nested batch from the graph's tensors, in the order of ``inputs``."""
    batch: dict[str, dict[str, torch.Tensor]] = {}
    for graph_input, tensor in zip(inputs, tensors, strict=True):
        batch.setdefault(graph_input.input, {})[graph_input.key] = tensor
    return batch


def dynamic_axes(inputs: list[GraphInput], outputs: list[str]) -> dict[str, dict[int, str]]:
    """Named variable axes of every graph input and output, for ``torch.onnx.export``."""
    axes = {i.name: {a: n for a, n in enumerate(i.shape) if isinstance(n, str)} for i in inputs}
    axes.update({name: {0: "batch"} for name in outputs})
    return axes


class GraphModule(nn.Module):
    """A :class:`~mmfuse.model.MultimodalModel` behind flat tensors: what the exporter traces.

    ``forward(*tensors)`` takes the graph inputs in order and returns the logits of every output
    in ``outputs`` order.
    """

    def __init__(self, model: nn.Module, inputs: list[GraphInput], outputs: list[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.outputs = outputs  # may end with FUSED: the fused vectors, for classic predictors

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(nest(self.inputs, tensors), fused=FUSED in self.outputs)
        return tuple(logits[name] for name in self.outputs)
