"""Tests for config validation (mmfuse.config, mmfuse.config_base)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from mmfuse.config import Config, load_config
from mmfuse.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

MINIMAL = {
    "inputs": [
        {"name": "image", "type": "image", "encoder": {"type": "cnn"}},
        {"name": "question", "type": "text", "encoder": {"type": "gru"}},
    ],
    "fusion": {"type": "concat"},
    "outputs": [{"name": "answer", "type": "category"}],
    "training": {"epochs": 10, "batch_size": 64, "learning_rate": 0.001},
}

TRAINING_KEYS = ["epochs", "batch_size", "learning_rate", "optimizer", "seed"]


def minimal(change: Callable[[dict], object] | None = None) -> dict:
    """A deep copy of the minimal config, optionally changed in place by ``change``."""
    data = copy.deepcopy(MINIMAL)
    if change is not None:
        change(data)
    return data


def config_error(data: dict) -> str:
    """The message of the ConfigError that validating ``data`` raises."""
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return str(info.value)


# --- a valid config gets every default filled -------------------------------------------------


def test_minimal_config_validates_and_fills_defaults():
    config = load_config(minimal())

    assert isinstance(config, Config)
    image, question = config.inputs
    assert image.column == "image" and question.column == "question"
    assert image.encoder == {"type": "cnn", "channels": [32, 64, 64, 64], "kernel_size": 3,
                             "stride": 2, "pool": "max", "dim": 256, "dropout": 0.0,
                             "coords": True}
    assert image.preprocess["pad_crop"] == 6  # cnn's default shift, unless the config sets it
    assert question.encoder["type"] == "gru"
    assert question.encoder["hidden_size"] == 128 and question.encoder["embedding_dim"] == 64
    assert image.preprocess["size"] == 64 and image.preprocess["normalize"] is True
    assert question.preprocess["tokenizer"] == "word"
    assert question.preprocess["max_length"] == 32
    assert config.fusion == {"type": "concat", "hidden": [256, 256], "dropout": 0.0}
    (answer,) = config.outputs
    assert answer.column == "answer"
    assert answer.head["type"] == "category" and answer.head["report_top"] == 10
    assert answer.head["top_k"] == 3 and answer.head["class_weights"] is None
    assert answer.head["calibrate"] is False
    assert config.training.epochs == 10 and config.training.optimizer == "adamw"


def test_fusion_default_is_resolved_with_its_options_when_omitted():
    config = load_config(minimal(lambda d: d.pop("fusion")))  # an image (cnn) and a question
    assert config.fusion == {"type": "film", "target": None, "query": None, "hidden": [256],
                             "dropout": 0.0}
    image_only = load_config(minimal(lambda d: (d.pop("fusion"), d["inputs"].pop(1))))
    assert image_only.fusion["type"] == "concat"
    assert image_only.fusion["hidden"] == [256, 256]


def test_encoder_defaults_by_modality_when_omitted():
    def drop_encoders(d: dict) -> None:
        for spec in d["inputs"]:
            spec.pop("encoder")

    config = load_config(minimal(drop_encoders))
    assert [i.encoder["type"] for i in config.inputs] == ["cnn", "gru"]


def test_explicit_column_is_kept():
    config = load_config(minimal(lambda d: d["inputs"][1].update(column="q_text")))
    assert config.inputs[1].column == "q_text"
    assert config.inputs[1].name == "question"


def test_component_given_as_string_is_resolved():
    config = load_config(minimal(lambda d: d.update(fusion="sum")))
    assert config.fusion["type"] == "sum" and config.fusion["dim"] == 256


def test_training_section_is_optional():
    config = load_config(minimal(lambda d: d.pop("training")))
    assert config.training.epochs == "auto" and config.training.batch_size == 64
    assert config.training.early_stopping_patience == "auto"


def test_minilm_encoder_selects_the_pretrained_tokenizer():
    config = load_config(minimal(lambda d: d["inputs"][1].update(encoder={"type": "minilm"})))
    assert config.inputs[1].preprocess["tokenizer"] == "pretrained"
    assert config.inputs[1].encoder == {"type": "minilm", "finetune": False}


def test_tokenizer_that_does_not_fit_the_encoder_is_rejected():
    message = config_error(minimal(lambda d: d["inputs"][1].update(
        encoder={"type": "minilm"}, preprocess={"tokenizer": "word"})))
    assert "inputs.1" in message and "tokenizer" in message and "'pretrained'" in message


# --- misspelt keys name their path, suggest the fix and list what is allowed -----------------


@pytest.mark.parametrize(
    ("change", "path_parts", "hint", "allowed"),
    [
        pytest.param(lambda d: d.update(inputz=d.pop("inputs")), ["inputz"], "inputs",
                     ["inputs", "fusion", "outputs", "training"], id="top-level"),
        pytest.param(lambda d: d["training"].update(epochz=3), ["training.epochz"], "epochs",
                     TRAINING_KEYS, id="training"),
        pytest.param(lambda d: d["inputs"][0]["encoder"].update(channelz=[8]),
                     ["inputs.0", "encoder 'cnn'", "channelz"], "channels",
                     ["channels", "kernel_size", "stride", "pool", "dim", "dropout"],
                     id="encoder-option"),
        pytest.param(lambda d: d["fusion"].update(hiden=[8]), ["fusion", "hiden"], "hidden",
                     ["hidden", "dropout"], id="fusion-option"),
        pytest.param(lambda d: d["inputs"][0].update(preprocess={"sise": 32}),
                     ["inputs.0", "preprocess", "sise"], "size",
                     ["size", "crop", "normalize", "flip_horizontal", "pad_crop"],
                     id="preprocess-option"),
        pytest.param(lambda d: d["outputs"][0].update(head={"top_kk": 3}),
                     ["outputs.0", "top_kk"], "top_k",
                     ["hidden", "dropout", "class_weights", "calibrate", "top_k", "report_top"],
                     id="head-option"),
    ],
)
def test_misspelt_key_names_path_hint_and_allowed_keys(change, path_parts, hint, allowed):
    message = config_error(minimal(change))

    position = 0
    for part in path_parts:  # the parts of the key path appear, in order
        found = message.find(part, position)
        assert found >= 0, f"{part!r} missing after position {position} in: {message}"
        position = found + len(part)
    assert f"did you mean {hint!r}" in message
    allowed_list = message.split("allowed keys:", 1)[1]
    for key in allowed:
        assert key in allowed_list


def test_unknown_key_without_a_close_match_has_no_hint():
    message = config_error(minimal(lambda d: d["training"].update(xyzzy=1)))
    assert "training.xyzzy" in message
    assert "did you mean" not in message
    assert "allowed keys:" in message and "epochs" in message


def test_every_problem_is_reported_at_once():
    def two_mistakes(d: dict) -> None:
        d["training"]["epochz"] = 3
        d["fusion"]["hiden"] = [8]

    message = config_error(minimal(two_mistakes))
    assert "training.epochz" in message and "hiden" in message


# --- bad values list what is allowed -----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "where", "allowed"),
    [
        pytest.param(lambda d: d["inputs"][0].update(type="imagez"), "inputs.0.type",
                     ["did you mean 'image'",
                      "choose one of: audio, binary, category, image, number, text, video"],
                     id="input-type"),
        pytest.param(lambda d: d["training"].update(optimizer="adamz"), "training.optimizer",
                     ["'adamw'", "'adam'", "'sgd'"], id="optimizer"),
        pytest.param(lambda d: d["inputs"][0]["encoder"].update(type="cnnn"), "inputs.0",
                     ["cnn", "gru", "lstm", "minilm"], id="encoder-type"),
        pytest.param(lambda d: d["fusion"].update(type="sums"), "fusion",
                     ["concat", "product", "sum"], id="fusion-type"),
    ],
)
def test_bad_value_lists_allowed_values(change, where, allowed):
    message = config_error(minimal(change))
    assert where in message
    for value in allowed:
        assert value in message


def test_bad_value_is_shown():
    message = config_error(minimal(lambda d: d["training"].update(optimizer="adamz")))
    assert "'adamz'" in message


def test_unknown_component_type_suggests_the_close_name():
    assert "did you mean 'cnn'" in config_error(
        minimal(lambda d: d["inputs"][0]["encoder"].update(type="cnnn")))
    assert "did you mean 'sum'" in config_error(minimal(lambda d: d["fusion"].update(type="sums")))


def test_out_of_range_number_is_rejected_with_its_path():
    message = config_error(minimal(lambda d: d["training"].update(epochs=0)))
    assert "training.epochs" in message and "(got 0)" in message


def test_text_encoder_on_image_input_is_rejected():
    message = config_error(minimal(lambda d: d["inputs"][0].update(encoder={"type": "gru"})))
    assert "inputs.0" in message
    assert "'gru' takes text or audio inputs, not image" in message


def test_image_encoder_on_text_input_is_rejected():
    message = config_error(minimal(lambda d: d["inputs"][1].update(encoder={"type": "cnn"})))
    assert "inputs.1" in message and "'cnn' takes image inputs, not text" in message


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d["inputs"][1].update(name="image"), id="two-inputs"),
        pytest.param(lambda d: d["outputs"][0].update(name="question"), id="input-and-output"),
    ],
)
def test_duplicate_names_are_rejected(change):
    message = config_error(minimal(change))
    assert "unique" in message


def test_invalid_name_is_rejected():
    message = config_error(minimal(lambda d: d["inputs"][0].update(name="my image")))
    assert "inputs.0.name" in message


def test_empty_inputs_are_rejected():
    message = config_error(minimal(lambda d: d.update(inputs=[])))
    assert "inputs" in message


# --- files ---------------------------------------------------------------------------------------


def test_load_config_from_yaml_file(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(minimal(lambda d: d["training"].update(epochs=3))))

    from_file = load_config(path)
    from_str_path = load_config(str(path))

    assert from_file.training.epochs == 3
    assert from_file.model_dump() == from_str_path.model_dump()
    expected = load_config(minimal(lambda d: d["training"].update(epochs=3))).model_dump()
    assert from_file.model_dump() == expected


def test_error_in_file_names_the_file(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(minimal(lambda d: d["training"].update(epochz=3))))
    with pytest.raises(ConfigError, match="training.epochz") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(missing)
    assert "nope.yaml" in str(info.value)


def test_invalid_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("inputs: [\n  - name: image\n    type: {image\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert "broken.yaml" in str(info.value)


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "42\n"])
def test_yaml_that_is_not_a_mapping_is_a_config_error(tmp_path, text):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


EXAMPLE_FILES = sorted(EXAMPLES.glob("**/*.yaml")) + sorted(EXAMPLES.glob("**/*.yml"))


def test_there_are_example_configs():
    assert EXAMPLE_FILES, f"no YAML files under {EXAMPLES}"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_config_loads(path):
    config = load_config(path)
    assert config.inputs and config.outputs
    assert config.fusion["type"]


@pytest.mark.parametrize(
    "preprocess",
    [{"size": 0}, {"size": -3}, {"size": [8, 0]}, {"size": 8, "crop": 0},
     {"size": 8, "crop": 10}, {"size": [8, 12], "crop": [4, 13]}],
    ids=["size-0", "size-negative", "width-0", "crop-0", "crop-too-big", "crop-too-wide"],
)
def test_impossible_image_sizes_are_rejected(preprocess):
    message = config_error(minimal(lambda d: d["inputs"][0].update(preprocess=preprocess)))
    assert "inputs.0" in message and "preprocess" in message


# --- defaults that depend on the inputs -------------------------------------------------------

def _types_only(*types: str, encoders: dict | None = None) -> dict:
    inputs = [{"name": f"x{i}", "type": t, **({"encoder": encoders[t]} if encoders and t in
                                              encoders else {})} for i, t in enumerate(types)]
    return {"inputs": inputs, "outputs": [{"name": "y", "type": "category"}]}


@pytest.mark.parametrize(("types", "encoders", "fusion"), [
    (("image", "text"), None, "film"),
    (("text", "image"), None, "film"),
    (("image", "text", "audio"), None, "film"),
    (("image", "text"), {"text": {"type": "bow"}}, "film"),
    (("image",), None, "concat"),
    (("video", "text"), None, "concat"),
    (("audio", "text"), None, "concat"),
    (("text",), None, "concat"),
])
def test_fusion_default_depends_on_the_inputs(types, encoders, fusion):
    config = load_config(_types_only(*types, encoders=encoders))
    assert config.fusion["type"] == fusion


def test_a_named_fusion_is_kept():
    data = _types_only("image", "text")
    data["fusion"] = {"type": "concat"}
    assert load_config(data).fusion["type"] == "concat"


def test_video_and_audio_encoders_default_to_seeing_order():
    config = load_config(_types_only("video", "audio"))
    video, audio = (i.encoder for i in config.inputs)
    assert video["pool"] == "flatten" and video["temporal"] == "gru"
    assert audio["temporal"] == "gru"
    assert config.inputs[0].encoder["type"] == "frame_cnn"
