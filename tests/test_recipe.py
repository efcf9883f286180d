"""The training recipe (mmfuse.training.recipe): config checks before any data is read, the
config validated and the pipeline built once on the way to training."""

from __future__ import annotations

import pytest

import mmfuse
from mmfuse.errors import ConfigError
from mmfuse.training import recipe


@pytest.fixture
def no_data_read(monkeypatch):
    """Reading a table fails the test: what it guards must fail before any data is read."""

    def refuse(*args, **kwargs):
        raise AssertionError("a table was read before the config error")

    monkeypatch.setattr(recipe, "as_table", refuse)


@pytest.mark.parametrize(("image", "why"), [
    ({"encoder": {"type": "cnn"}}, r"encoder 'cnn' has no frozen pretrained part"),
    ({"encoder": {"type": "efficientnet_lite0"}, "preprocess": {"size": 32, "pad_crop": 2}},
     r"augments at random"),
    ({"encoder": {"type": "efficientnet_lite0", "freeze": False}, "preprocess": {"size": 32}},
     r"encoder 'efficientnet_lite0' has no frozen pretrained part"),
])
def test_cache_features_true_that_cannot_apply_fails_before_the_table_is_read(
        minimal_config, tmp_path, no_data_read, image, why):
    minimal_config["inputs"][0].update(cache_features=True, **image)
    model = mmfuse.Model.from_config(minimal_config)
    with pytest.raises(ConfigError, match=rf"inputs\.image\.cache_features: true, but .*{why}"):
        model.fit(tmp_path / "does-not-exist.csv", out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_old_run_stays_when_the_config_fails(minimal_config, tmp_path, no_data_read):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    minimal_config["inputs"][0]["cache_features"] = True  # the cnn encoder cannot cache
    with pytest.raises(ConfigError):
        mmfuse.Model.from_config(minimal_config).fit(
            tmp_path / "does-not-exist.csv", out=tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / "run.json").read_text() == "{}"


def test_train_validates_the_config_and_builds_the_pipeline_once(
        shapes_qa, minimal_config, tmp_path, monkeypatch):
    import yaml

    from mmfuse import api, config
    from mmfuse.cli import app
    from mmfuse.pipeline import Pipeline

    calls = {"load_config": 0, "from_config": 0}
    real_load, real_build = config.load_config, Pipeline.from_config.__func__

    def counting_load(*args, **kwargs):
        calls["load_config"] += 1
        return real_load(*args, **kwargs)

    def counting_build(cls, *args, **kwargs):
        calls["from_config"] += 1
        return real_build(cls, *args, **kwargs)

    monkeypatch.setattr(config, "load_config", counting_load)
    monkeypatch.setattr(api, "load_config", counting_load)
    monkeypatch.setattr(Pipeline, "from_config", classmethod(counting_build))
    minimal_config["training"].update(epochs=1)
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(minimal_config))
    app(["train", str(path), "--data", str(shapes_qa["en_train"]), "--out", str(tmp_path / "run"),
         "--threads", "1", "--json"], standalone_mode=False)
    assert (tmp_path / "run" / "model").is_dir()
    assert calls == {"load_config": 1, "from_config": 1}


def test_build_time_option_checks_fail_when_the_config_is_loaded():
    """Checks that need only an encoder's options run with the config's validation."""
    from mmfuse.config import load_config

    video = {"inputs": [{"name": "clip", "type": "video",
                         "encoder": {"type": "frame_cnn", "temporal": "transformer",
                                     "heads": 5}}],
             "outputs": [{"name": "y", "type": "category"}]}
    with pytest.raises(ConfigError, match="heads=5 must divide dim=128"):
        load_config(video)
    audio = {"inputs": [{"name": "a", "type": "audio",
                         "encoder": {"type": "audio_cnn", "dim": 63}}],
             "outputs": [{"name": "y", "type": "category"}]}
    with pytest.raises(ConfigError, match="temporal gru needs an even dim"):
        load_config(audio)
