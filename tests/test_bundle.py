"""Tests for saving and loading model bundles (mmfuse.bundle)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

import mmfuse
from mmfuse.bundle import FILES, FORMAT_VERSION, find_bundle, load_bundle, save_bundle
from mmfuse.errors import BundleError

CONFIG = {"inputs": [{"name": "question", "type": "text"}], "fusion": {"type": "concat"},
          "note": "unicode ok: 中文"}
PREPROCESSORS = {"inputs": {"question": {"tokenizer": "{}"}},
                 "outputs": {"answer": {"labels": ["no", "yes"], "counts": {"no": 2, "yes": 3}}}}


def state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "fusion.weight": torch.randn(3, 4, generator=generator),
        "heads.answer.bias": torch.randn(2, generator=generator),
        "encoder.embed": torch.randn(5, 2, generator=generator).t(),  # not contiguous
        "step": torch.tensor([7], dtype=torch.int64),
    }


def assert_same_state(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype, key
        assert torch.equal(got[key], tensor), key


@pytest.fixture
def bundle(tmp_path) -> Path:
    return save_bundle(tmp_path / "run" / "model", CONFIG, PREPROCESSORS, state_dict())


def test_round_trip(bundle):
    config, preprocessors, tensors = load_bundle(bundle)
    assert config == CONFIG
    assert preprocessors == PREPROCESSORS
    assert_same_state(tensors, state_dict())


def test_bundle_holds_exactly_the_documented_files(bundle):
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*FILES, "manifest.json"])
    leftovers = [p.name for p in bundle.parent.iterdir() if p.name != "model"]
    assert leftovers == [], "temporary folders were left beside the bundle"


def test_manifest_records_versions_and_hashes(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["mmfuse_version"] == mmfuse.__version__
    assert set(manifest["files"]) == {"config.json", "preprocessors.json", "model.safetensors"}
    for name, entry in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)


def test_no_pickle_anywhere(bundle):
    for name in ("config.json", "preprocessors.json", "manifest.json"):
        json.loads((bundle / name).read_text(encoding="utf-8"))  # plain JSON
    with safe_open(str(bundle / "model.safetensors"), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    assert_same_state(tensors, state_dict())
    for path in bundle.iterdir():
        head = path.read_bytes()[:2]
        assert not head.startswith((b"\x80", b"PK")), f"{path.name} looks pickled"


def test_altered_weights_are_refused(bundle):
    path = bundle / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    path.write_bytes(bytes(data))

    with pytest.raises(BundleError, match="sha256") as info:
        load_bundle(bundle)
    assert "altered" in str(info.value) and "model.safetensors" in str(info.value)


@pytest.mark.parametrize("name", ["config.json", "preprocessors.json"])
def test_altered_json_is_refused(bundle, name):
    path = bundle / name
    path.write_text(path.read_text().replace("no", "oh"))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", FILES)
def test_missing_file_is_refused(bundle, name):
    (bundle / name).unlink()
    with pytest.raises(BundleError, match="missing") as info:
        load_bundle(bundle)
    assert name in str(info.value)


def test_missing_manifest_means_no_bundle(bundle):
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(bundle)


def test_damaged_manifest_is_refused(bundle):
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is damaged"):
        load_bundle(bundle)


def test_newer_format_is_refused(bundle):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="upgrade mmfuse"):
        load_bundle(bundle)


def test_find_bundle_accepts_run_dir_and_bundle_dir(bundle):
    run_dir = bundle.parent
    assert find_bundle(bundle) == bundle
    assert find_bundle(run_dir) == bundle
    assert find_bundle(str(run_dir)) == bundle
    assert load_bundle(run_dir)[0] == CONFIG


def test_find_bundle_in_a_folder_without_one(tmp_path):
    with pytest.raises(BundleError, match="no model bundle") as info:
        find_bundle(tmp_path)
    assert "manifest.json" in str(info.value)


def test_saving_again_replaces_the_bundle(bundle):
    save_bundle(bundle, {"version": 2}, {}, state_dict(seed=1))
    config, preprocessors, tensors = load_bundle(bundle)
    assert config == {"version": 2} and preprocessors == {}
    assert_same_state(tensors, state_dict(seed=1))


def test_crash_during_save_leaves_the_previous_bundle(bundle, monkeypatch):
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(bundle, {"version": 2}, {}, state_dict(seed=1))
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    config, _, tensors = load_bundle(bundle)
    assert config == CONFIG
    assert_same_state(tensors, state_dict())


def test_crash_during_first_save_leaves_no_bundle(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError):
        save_bundle(tmp_path / "model", CONFIG, PREPROCESSORS, state_dict())
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "model")
