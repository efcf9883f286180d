"""Export a trained model to ONNX, and load the export back behind the same pipeline.

An export is a folder: ``model.onnx`` (the whole model, weights included, one file),
``config.json`` and ``preprocessors.json`` (copied from the bundle: the preprocessing runs in
Python, STFT and log-mel included, as for the PyTorch model), one ``predictor_NAME.onnx`` per
output served by a classic predictor (converted by skl2onnx; ``model.onnx`` then also gives
the fused vectors it reads) and ``manifest.json`` (format, versions, the graph's inputs and
outputs, the predictors, opset, sha256 of each file).

The graph is traced with torch's TorchScript-based exporter (``dynamo=False``): it turns
packed GRU / LSTM sequences into ONNX's GRU / LSTM with sequence lengths and exports a small
model in a fraction of a second, where the torch.export-based exporter takes seconds and cannot
export packed sequences. Tracing records what ran on the example batch, so a Python branch on a
tensor's value would be frozen into the graph: the model code has none on the export path (see
``MultimodalModel._modulated_dense``), a warning that one ran in project code is an error here,
and before the export is written it must match PyTorch on batches of other shapes.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from ..api import Model
from ..bundle import (
    ONNX_FORMAT,
    atomic_folder,
    check_files,
    file_entries,
    find_bundle,
    read_manifest,
    write_json,
)
from ..config import load_config, upgrade_bundle_config
from ..errors import BundleError, MmfuseError, require
from ..model import FUSED
from ..pipeline import Pipeline
from ..predictors import to_onnx
from .examples import CHECKS, TRACE, example_batch
from .graph import GraphInput, GraphModule, dynamic_axes, flatten, graph_inputs
from .runtime import OnnxModel, build_heads, run_predictor

FORMAT_VERSION = 1
FILES = ("model.onnx", "config.json", "preprocessors.json")
OPSET = 17
TOLERANCE = 1e-3  # most |ONNX - PyTorch| logit difference accepted on the check batches
PREDICTOR_TOLERANCE = 1e-4  # most |skl2onnx - scikit-learn| difference of a predictor's answers


def export_onnx(source: str | Path, out_dir: str | Path) -> dict:
    """Export the model of a run or bundle to an ONNX folder (replacing any export there).

    Args:
        source: a run directory (holding ``model/``) or a bundle directory.
        out_dir: the folder to write; written beside and swapped in, so it is never half done.

    Returns:
        ``{"path", "files", "inputs", "outputs", "opset", "seconds", "max_abs_diff"}``: the
        graph's inputs and outputs (name, shape with named variable axes, dtype), and the
        largest logit difference from PyTorch over the check batches.

    Raises:
        MmfuseError: the model cannot be exported (the message names the part), or the export
            disagrees with PyTorch.
        BundleError: ``source`` holds no valid bundle.
    """
    onnx = require("onnx", "export", "exporting to ONNX")
    start = time.perf_counter()
    bundle = find_bundle(source)
    model = Model.load(bundle)
    pipeline, net = model.pipeline, model.pipeline.model.eval()
    _refuse_text_outputs(net, bundle, source)
    trace_batch = example_batch(pipeline, TRACE, seed=0)
    inputs = graph_inputs(model.config, trace_batch)
    outputs = list(pipeline.outputs)
    batches = [trace_batch] + [example_batch(pipeline, c, seed=i + 1)
                               for i, c in enumerate(CHECKS)]
    target = Path(out_dir)
    with atomic_folder(target) as tmp:
        graph_outputs = outputs + ([FUSED] if pipeline.served else [])
        _write_graph(onnx, net, inputs, graph_outputs, trace_batch, tmp)
        for name in ("config.json", "preprocessors.json"):
            shutil.copyfile(bundle / name, tmp / name)
        session = OnnxModel(tmp / "model.onnx", inputs, outputs, {})
        difference = _check_graph(net, session, batches, bundle)
        predictors = _export_predictors(pipeline, net, batches, tmp)
        outputs_info = _outputs_info(net, trace_batch, outputs)
        manifest = _manifest(tmp, inputs, outputs_info, predictors)
        write_json(tmp / "manifest.json", manifest)
    files = (*FILES, *(p["file"] for p in predictors), "manifest.json")
    return {"path": str(target), "files": {n: str(target / n) for n in files},
            "inputs": manifest["inputs"], "outputs": outputs_info, "predictors": predictors,
            "opset": OPSET, "seconds": round(time.perf_counter() - start, 3),
            "max_abs_diff": difference}


def _refuse_text_outputs(net: torch.nn.Module, bundle: Path, source: str | Path) -> None:
    """Raise when the model generates text: its search loops over generated tokens.

    Raises:
        MmfuseError: the model has a text output.
    """
    text = [n for n, head in net.heads.items() if head.traits.generates]
    if text:
        raise MmfuseError(f"{bundle}: text output {text[0]!r} cannot be exported to ONNX yet "
                          "(its search loops over generated tokens); serve the PyTorch model "
                          f"with: mmfuse serve {source}")


def _write_graph(onnx: ModuleType, net: torch.nn.Module, inputs: list[GraphInput],
                 graph_outputs: list[str], trace_batch: dict, folder: Path) -> None:
    """Trace ``net`` into ``folder/model.onnx`` as one file and check it with ONNX's checker.

    Raises:
        MmfuseError: the exporter wrote external data (a model over 2 GB), or tracing failed.
    """
    # eval(): the exporter sets the traced module's mode back afterwards, for all of net
    graph = GraphModule(net, inputs, graph_outputs).eval()
    _trace(graph, inputs, graph_outputs, trace_batch, folder / "model.onnx")
    extra = sorted(p.name for p in folder.iterdir() if p.name != "model.onnx")
    if extra:
        raise MmfuseError(f"the model is too large for a single ONNX file (2 GB); the "
                          f"exporter wrote external data {extra}")
    onnx.checker.check_model(str(folder / "model.onnx"))


def _check_graph(net: torch.nn.Module, session: OnnxModel, batches: list[dict],
                 bundle: Path) -> float:
    """The largest logit difference between ONNX and PyTorch over ``batches``.

    Raises:
        MmfuseError: the difference is over ``TOLERANCE``.
    """
    difference = max(_difference(net, session, b) for b in batches)
    if not difference <= TOLERANCE:
        raise MmfuseError(
            f"the ONNX graph of {bundle} differs from the PyTorch model by {difference:.3g} "
            f"(more than {TOLERANCE}) on a check batch; nothing was written. Please report "
            "this with the model's config.json")
    return difference


def _outputs_info(net: torch.nn.Module, batch: dict, outputs: list[str]) -> list[dict]:
    """The manifest entry of each head output: name, shape with a named batch axis, dtype."""
    with torch.no_grad():
        shapes = {n: list(v.shape[1:]) for n, v in net(batch).items()}
    return [{"name": n, "shape": ["batch", *shapes[n]], "dtype": "float32"} for n in outputs]


def _export_predictors(pipeline: Pipeline, net: torch.nn.Module, batches: list[dict],
                       folder: Path) -> list[dict]:
    """Convert each served classic predictor with skl2onnx into ``folder`` and check it
    against scikit-learn on the fused vectors of the check batches; their manifest entries.

    Raises:
        MmfuseError: a converted predictor differs from scikit-learn by more than
            ``PREDICTOR_TOLERANCE``.
    """
    if not pipeline.served:
        return []
    ort = require("onnxruntime", "export", "checking an exported predictor")
    with torch.no_grad():
        fused = np.concatenate([net(b, fused=True)[FUSED].numpy() for b in batches])
    entries = []
    for name in pipeline.served:
        predictor = pipeline.predictors[name]
        file = f"predictor_{name}.onnx"
        (folder / file).write_bytes(to_onnx(predictor, fused.shape[1], OPSET))
        session = ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
        regression = predictor.kind.regression
        got = run_predictor(session, regression, fused)
        expected = predictor.model.predict(fused) if regression else \
            predictor.model.predict_proba(fused)
        difference = float(np.abs(got - expected).max())
        if not difference <= PREDICTOR_TOLERANCE:
            raise MmfuseError(f"the ONNX form of output {name!r}'s predictor differs from "
                              f"scikit-learn by {difference:.3g} (more than "
                              f"{PREDICTOR_TOLERANCE}); nothing was written")
        entries.append({"output": name, "file": file, "type": predictor.output_type,
                        "classes": None if predictor.classes is None else
                        predictor.classes.tolist(), "labels": predictor.labels,
                        "max_abs_diff": difference})
    return entries


def load_exported(out_dir: str | Path, threads: int | None = None) -> Model:
    """A :class:`~mmfuse.api.Model` whose pipeline runs an ONNX export with onnxruntime.

    ``predict`` and ``evaluate`` work as on the PyTorch model; training and saving do not.

    Args:
        out_dir: a folder written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads (default: the CPUs this process may use).

    Raises:
        BundleError: the folder is not an export, a file is missing, or a file's sha256 differs
            from the manifest (altered or corrupted).
    """
    folder = Path(out_dir)
    if not (folder / "manifest.json").is_file():
        raise BundleError(f"no ONNX export in {str(folder)!r}: expected manifest.json there; "
                          "write one with mmfuse.export.export_onnx(run_dir, out_dir)")
    manifest = read_manifest(folder, FORMAT_VERSION, "ONNX export")
    if manifest.get("format") != ONNX_FORMAT:
        raise BundleError(f"{folder} is not an ONNX export (a model bundle?); load a bundle "
                          "with mmfuse.Model.load, or export it with export_onnx")
    predictors = manifest.get("predictors", [])
    check_files(folder, manifest, [*FILES, *(p["file"] for p in predictors)], "ONNX export",
                "export the model again")
    config = load_config(upgrade_bundle_config(
        json.loads((folder / "config.json").read_text(encoding="utf-8"))))
    pipeline = Pipeline.from_config(config)
    pipeline.load_state(json.loads((folder / "preprocessors.json").read_text(encoding="utf-8")))
    inputs = [GraphInput(**i) for i in manifest["inputs"]]
    outputs = [o["name"] for o in manifest["outputs"]]
    specs = {name: prep.target_spec() for name, prep in pipeline.outputs.items()}
    pipeline.model = OnnxModel(folder / "model.onnx", inputs, outputs,
                               build_heads(config, specs), threads,
                               {p["output"]: (folder / p["file"], p) for p in predictors})
    return Model(config, pipeline)


def _trace(graph: GraphModule, inputs: list[GraphInput], outputs: list[str], batch: dict,
           path: Path) -> None:
    """Trace ``graph`` on ``batch`` into ``path``.

    Raises:
        MmfuseError: code outside torch turned a tensor into a Python value while tracing (the
            graph would keep the example's value), or torch cannot export an operation.
    """
    example = tuple(torch.from_numpy(v) for v in flatten(inputs, batch).values())
    try:
        # The exporter warns about itself and about every shape check in torch's modules;
        # only a tracer warning from other code matters (see _frozen_values).
        with torch.no_grad(), _traceable_torch(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(
                graph, example, str(path), dynamo=False, opset_version=OPSET,
                input_names=[i.name for i in inputs], output_names=outputs,
                dynamic_axes=dynamic_axes(inputs, outputs), do_constant_folding=True)
    except torch.onnx.errors.OnnxExporterError as exc:
        raise MmfuseError(f"torch cannot export this model to ONNX: {exc}") from None
    frozen = _frozen_values(caught)
    if frozen:
        raise MmfuseError(
            "cannot export: tracing froze a value that depends on the batch at "
            + "; ".join(frozen) + ". The ONNX graph would keep the example batch's value for "
            "every batch; write that line with tensor operations (torch.where, masks) instead")


@contextmanager
def _traceable_torch() -> Iterator[None]:
    """Torch set up for tracing, then restored.

    - Attention's fused fast path is off: it has no ONNX form.
    - ``Tensor.unflatten`` becomes a reshape to the traced sizes: torch 2.13's tracer records
      the sizes of an unflatten's result as constants, which froze the sequence length inside
      ``nn.MultiheadAttention`` (its packed q/k/v projection unflattens). Same values.
    """
    fastpath, unflatten = torch.backends.mha.get_fastpath_enabled(), torch.Tensor.unflatten

    def reshape(self: torch.Tensor, dim: int, sizes) -> torch.Tensor:
        shape, dim = list(self.shape), dim % self.dim()
        return self.reshape(shape[:dim] + list(sizes) + shape[dim + 1:])

    torch.backends.mha.set_fastpath_enabled(False)
    torch.Tensor.unflatten = reshape
    try:
        yield
    finally:
        torch.Tensor.unflatten = unflatten
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _frozen_values(caught: list[warnings.WarningMessage]) -> list[str]:
    """``file:line (message)`` of each tracer warning raised outside torch and transformers,
    whose own warnings are about shapes that the graph keeps dynamic."""
    libraries = [Path(torch.__file__).parent]
    try:
        import transformers

        libraries.append(Path(transformers.__file__).parent)
    except ImportError:
        pass
    found = []
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            continue
        if any(Path(w.filename).is_relative_to(lib) for lib in libraries):
            continue
        found.append(f"{w.filename}:{w.lineno} ({str(w.message).split('.')[0]})")
    return list(dict.fromkeys(found))


def _difference(net: torch.nn.Module, session: OnnxModel, batch: dict) -> float:
    """Largest absolute difference of the heads' outputs between PyTorch and onnxruntime on
    one batch."""
    with torch.no_grad():
        expected = net(batch)
    got = session(batch)
    return max(float(np.abs(got[n].numpy() - expected[n].numpy()).max()) for n in expected)


def _manifest(folder: Path, inputs: list[GraphInput], outputs: list[dict],
              predictors: list[dict]) -> dict:
    from .. import __version__

    return {
        "format": ONNX_FORMAT,
        "format_version": FORMAT_VERSION,
        "mmfuse_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "opset": OPSET,
        "inputs": [i.as_dict() for i in inputs],
        "outputs": outputs,
        "predictors": predictors,
        "files": file_entries(folder, [*FILES, *(p["file"] for p in predictors)]),
    }
