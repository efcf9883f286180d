"""Per-row attribution over each input's tokens.

Two methods:

- ``integrated_gradients`` (Sundararajan et al. 2017, "Axiomatic Attribution for Deep
  Networks"): every encoder passes its token features through ``token_features`` (an
  ``nn.Identity`` placed where each token is still one token: a cnn grid cell, a word
  embedding, an audio time step, a video frame vector). The features ``x`` are scaled along the
  straight path from a zero baseline, ``alpha * x`` for ``steps`` midpoints ``alpha`` in (0, 1),
  everything downstream (the encoder's pooling and temporal model, the fusion, the heads) is
  run on them as one batch, and the attribution of token ``n`` is
  ``sum_d x[n, d] * mean_alpha(d score / d z[n, d])`` at ``z = alpha * x``. The score is the
  output type's ``explain_score``: the logit of the predicted class (category outputs), the
  log-probability of the generated text (text outputs), the value itself (number, binary).
  By completeness, the attributions of one input sum to
  ``score(x) - score(0)`` up to the path's discretisation. One input is scaled at a time; the
  others keep their values.
- ``attention``: the weights of a fusion that attends over one input's tokens (``relation``
  with ``pairs: anchored``: the question-driven anchor over the objects). Only that input's
  tokens get values.
- ``auto`` (the default): attention for the input the fusion attends over, integrated
  gradients for every other input. On Sort-of-CLEVR the anchor's attention puts its top token
  on the named object more often than integrated gradients do
  (``benchmarks/results/explain.md``).

Both run in eval mode on one row at a time (the ``steps`` copies of it form the batch).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MmfuseError
from ..outputs import output_type
from ..pipeline import EncodedTable, Pipeline

METHODS = ("auto", "integrated_gradients", "attention")


def replicate(inputs: dict[str, dict], copies: int) -> dict[str, dict]:
    """A one-row batch ``inputs`` as ``copies`` rows, each with its own copy of every item (so
    each copy can be scaled on its own)."""
    out = {}
    for name, tensors in inputs.items():
        if int(tensors["index"][0]) < 0:  # the row lacks this input
            out[name] = {"index": torch.full((copies,), -1, dtype=torch.long)}
            continue
        items = {k: v.repeat(copies, *[1] * (v.dim() - 1)) for k, v in tensors.items()
                 if k != "index"}
        out[name] = {**items, "index": torch.arange(copies)}
    return out


def has_attention(pipeline: Pipeline) -> str | None:
    """The input whose tokens the fusion attends over with weights it exposes, or None."""
    return pipeline.model.fusion.traits.attention_over


def prediction_scores(pipeline: Pipeline, row_outputs: dict) -> dict:
    """Per output, a function of a batch's model outputs giving each copy's score toward this
    row's prediction, and the targets the forward pass needs (teacher forcing for text)."""
    scores, targets = {}, {}
    for o in pipeline.config.outputs:
        scores[o.name], target = output_type(o.type).explain_score(row_outputs[o.name])
        if target is not None:
            targets[o.name] = target
    return {"scores": scores, "targets": targets}


def word_points(net, name: str) -> list:
    """The modules through which causal LM heads read input ``name`` as words: one call per
    row, on that row's word embeddings ``[n, H]`` (``heads/causal_lm.py``); empty when none
    does."""
    return [head.word_features[name] for head in net.heads.values()
            if name in getattr(head, "word_features", {})]


def integrated_gradients(pipeline: Pipeline, inputs: dict, name: str, score_fns: dict,
                         targets: dict, steps: int = 32) -> tuple[dict, torch.Tensor]:
    """Attributions ``{output: [N]}`` of input ``name``'s tokens for a one-row batch, and the
    token mask ``[N]`` (padding False).

    A text input that a causal LM reads as words is scaled where the LM embeds them too (copy
    ``k`` of the row by the same ``alpha_k``), so its words get the attribution of the path
    through the LM; a fusion that also reads the input adds its own."""
    net = pipeline.model
    encoder = net.encoders[name]
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    captured: dict = {}
    words: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x, z) per call: one row each

    def scale(module, args, output):
        x = output.detach()
        z = (x * alphas.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)).requires_grad_(True)
        captured.update(x=x[0], z=z)
        return z

    def scale_words(module, args, output):  # rows come in order, so call k is copy k
        x = output.detach()
        z = (x * alphas[len(words) % steps].to(x.dtype)).requires_grad_(True)
        words.append((x, z))
        return z

    def keep_mask(module, args, output):
        captured["mask"] = output.mask[0].detach()

    handles = [encoder.token_features.register_forward_hook(scale),
               encoder.register_forward_hook(keep_mask)]
    handles += [point.register_forward_hook(scale_words) for point in word_points(net, name)]
    try:
        with torch.enable_grad():
            rows = replicate(inputs, steps)
            copies = {k: v.expand(steps, *v.shape[1:]) for k, v in targets.items()}
            outputs = net(rows, copies) if copies else net(rows)
            if "z" not in captured:
                raise MmfuseError(f"explain: the encoder of input {name!r} did not run")
            result = {}
            zs = [captured["z"]] + [z for _, z in words]
            for out_name, fn in score_fns.items():
                grads = torch.autograd.grad(fn(outputs[out_name]).sum(), zs,
                                            retain_graph=True, allow_unused=True)
                # None: the output does not read this input's tokens that way
                values = torch.zeros(captured["x"].shape[0]) if grads[0] is None else \
                    (captured["x"] * grads[0].mean(0)).sum(-1)
                if words:
                    values = values + lm_word_attribution(inputs[name], words, grads[1:],
                                                           steps)
                result[out_name] = values
    finally:
        for handle in handles:
            handle.remove()
    mask = captured.get("mask", torch.ones(captured["x"].shape[0], dtype=torch.bool))
    return result, mask


def lm_word_attribution(tensors: dict, words: list, grads: tuple, steps: int) -> torch.Tensor:
    """``[N]``: each real token's ``sum_d x[d] * mean_alpha(d score / d z[d])`` on the LM's
    word embeddings (``steps`` calls per head that reads them), 0 on padding."""
    total = torch.zeros(tensors["ids"].shape[1])
    real = tensors["mask"][0].bool()
    for (x, _), grad in zip(words, grads, strict=True):
        if grad is not None:  # None: another head's call
            total[real] += (x * grad).sum(-1).float() / steps
    return total


def attribute_row(pipeline: Pipeline, data: EncodedTable, row: int, method: str,
                  steps: int = 32) -> dict:
    """``{"method", "outputs": {output: {"logits": ..., "scores": {input: np.ndarray}}},
    "masks": {input: np.ndarray}, "inputs": tensors}`` for one row of an encoded table."""
    net = pipeline.model
    net.eval()
    inputs, _ = pipeline.batch(data, np.array([row]))
    with torch.no_grad():
        row_outputs = net(inputs)  # also leaves the fusion's attention for this row, if any
    present = [n for n, t in inputs.items() if int(t["index"][0]) >= 0]
    scores: dict[str, dict[str, np.ndarray]] = {o: {} for o in row_outputs}
    masks: dict[str, np.ndarray] = {}
    methods: dict[str, str] = {}
    attended = has_attention(pipeline) if method in ("auto", "attention") else None
    if attended in present:
        weights = net.fusion.last_attention[0].numpy()  # set by the forward pass above
        masks[attended], methods[attended] = np.ones(len(weights), dtype=bool), "attention"
        for out in scores:
            scores[out][attended] = weights
    if method != "attention":  # every other input (all of them without attention): IG
        plan = prediction_scores(pipeline, row_outputs)
        for name in [n for n in present if n not in methods]:
            per_output, mask = integrated_gradients(pipeline, inputs, name, plan["scores"],
                                                    plan["targets"], steps)
            masks[name], methods[name] = mask.numpy(), "integrated_gradients"
            for out, values in per_output.items():
                scores[out][name] = values.detach().numpy()
    used = ("attention" if "attention" in methods.values() else
            "integrated_gradients" if methods else "none")  # none: the row has no input left
    return {"method": used, "methods": methods, "row_outputs": row_outputs, "scores": scores,
            "masks": masks, "inputs": inputs}
