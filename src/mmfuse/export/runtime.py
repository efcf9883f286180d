"""An ONNX export run by onnxruntime, in the place of the PyTorch model inside a Pipeline.

:class:`OnnxModel` is what :func:`mmfuse.export.load_exported` puts in ``pipeline.model``. The
pipeline calls it as it calls :class:`~mmfuse.model.MultimodalModel`: with the batch of
:meth:`Pipeline.batch <mmfuse.pipeline.Pipeline.batch>`, getting logits per output, and turns
logits into labels with ``heads[name].postprocess``. No PyTorch weights are loaded: the graph
holds them all, the heads only know their labels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..errors import MmfuseError, require
from ..model import build_component
from ..registry import HEADS
from ..training.threads import available_cpus
from .graph import GraphInput, flatten


class OnnxModel:
    """An onnxruntime session that a :class:`~mmfuse.pipeline.Pipeline` drives like its model.

    Args:
        path: the ``model.onnx`` file.
        inputs: the graph inputs, as the export's manifest lists them.
        outputs: the output names, in graph order.
        heads: per output, a head that postprocesses logits (labels, top-k).
        threads: onnxruntime intra-op threads (default: the CPUs this process may use).
    """

    def __init__(self, path: Path, inputs: list[GraphInput], outputs: list[str],
                 heads: dict[str, nn.Module], threads: int | None = None) -> None:
        ort = require("onnxruntime", "export", "serving an ONNX export")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cpus()
        options.inter_op_num_threads = 1  # one batch at a time; another pool only competes
        # idle threads sleep instead of spinning: in a server the spinning steals the cores
        # that decode requests and run the event loop
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = inputs
        self.outputs = outputs
        self.heads = heads

    def __call__(self, inputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Logits per output for a batch of :meth:`Pipeline.batch`."""
        logits = self.session.run(self.outputs, flatten(self.inputs, inputs))
        return {name: torch.from_numpy(out) for name, out in zip(self.outputs, logits,
                                                                  strict=True)}

    def eval(self) -> OnnxModel:
        """Nothing to switch: an export always runs in inference mode."""
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        if mode:
            raise MmfuseError("an ONNX export only runs inference; train the PyTorch model "
                              "(Model.from_config(...).fit) and export it again")
        return self

    def state_dict(self) -> dict:
        raise MmfuseError("an ONNX export has no PyTorch weights to save; its folder is "
                          "already complete (copy it), or save the run it was exported from")


def build_heads(config: Config, labels: dict[str, list[str]]) -> dict[str, nn.Module]:
    """Heads for postprocessing only: labels and options from the config, no weights (the
    graph computes the logits, so their layers are never run and get a nominal width of 1)."""
    return {o.name: build_component(HEADS, o.head, 1, labels[o.name]) for o in config.outputs}
