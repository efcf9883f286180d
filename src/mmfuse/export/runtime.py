"""An ONNX export run by onnxruntime, in the place of the PyTorch model inside a Pipeline.

:class:`OnnxModel` is what :func:`mmfuse.export.load_exported` puts in ``pipeline.model``. The
pipeline calls it as it calls :class:`~mmfuse.model.MultimodalModel`: with the batch of
:meth:`Pipeline.batch <mmfuse.pipeline.Pipeline.batch>`, getting logits per output, and turns
logits into labels with ``heads[name].postprocess``. No PyTorch weights are loaded: the graph
holds them all, the heads only know their labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..errors import MmfuseError, require
from ..model import FUSED
from ..outputs import output_type
from ..specs import TargetSpec
from ..threads import available_cpus
from .graph import GraphInput, flatten


class OnnxModel:
    """An onnxruntime session that a :class:`~mmfuse.pipeline.Pipeline` drives like its model.

    Args:
        path: the ``model.onnx`` file.
        inputs: the graph inputs, as the export's manifest lists them.
        outputs: the output names, in graph order.
        heads: per output, a head that postprocesses logits (labels, top-k).
        threads: onnxruntime intra-op threads (default: the CPUs this process may use).
        predictors: per output served by a classic predictor, its converted file and its
            manifest entry (type, classes, labels); the graph then also gives the fused
            vectors, which the predictor's session reads.
    """

    def __init__(self, path: Path, inputs: list[GraphInput], outputs: list[str],
                 heads: dict[str, nn.Module], threads: int | None = None,
                 predictors: dict[str, tuple[Path, dict]] | None = None) -> None:
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
        self.predictors = {name: (ort.InferenceSession(str(file), options,
                                                       providers=["CPUExecutionProvider"]), entry)
                           for name, (file, entry) in (predictors or {}).items()}

    def __call__(self, inputs: dict[str, dict[str, torch.Tensor]], targets: None = None,
                 fused: bool = False) -> dict[str, torch.Tensor]:
        """Outputs per output for a batch of :meth:`Pipeline.batch` (served predictors'
        answers in their head's output space)."""
        names = self.outputs + ([FUSED] if self.predictors or fused else [])
        results = dict(zip(names, self.session.run(names, flatten(self.inputs, inputs)),
                           strict=True))
        for name, (session, entry) in self.predictors.items():
            kind = output_type(entry["type"])
            answer = run_predictor(session, kind.regression, results[FUSED])
            classes = None if kind.regression else np.asarray(entry["classes"])
            results[name] = kind.predictor_answer(answer, classes, entry["labels"])
        if not fused:
            results.pop(FUSED, None)
        return {name: torch.from_numpy(np.asarray(out)) for name, out in results.items()}

    training = False  # as torch modules say it

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


def build_heads(config: Config, specs: dict[str, TargetSpec]) -> dict[str, nn.Module]:
    """Heads for postprocessing only: labels, statistics and options from the config and the
    preprocessors, no weights (the graph computes the outputs, so their layers are never run
    and get a nominal width of 1)."""
    return {o.name: output_type(o.type).build_head(o, 1, specs[o.name], {})
            for o in config.outputs}


def run_predictor(session, regression: bool, fused: np.ndarray) -> np.ndarray:
    """A converted predictor's answer: a regressor's values ``[N]``, else a classifier's
    probabilities."""
    names = [o.name for o in session.get_outputs()]
    wanted = names[0] if regression else "probabilities"
    out = session.run([wanted], {"fused": np.asarray(fused, dtype=np.float32)})[0]
    return out.reshape(-1) if regression else out
