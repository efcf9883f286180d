"""Devices and mixed precision (mmfuse.device): names, transfers, bf16/fp16 training
with fp32 weights and metrics. The CUDA paths themselves run in benchmarks/gpu.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import mmfuse
from mmfuse.device import grad_scaler, resolve_device, to_cpu, to_device
from mmfuse.errors import ConfigError


def test_auto_is_the_cpu_without_cuda_and_cuda_without_it_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(None)
    with pytest.raises(ConfigError, match="no CUDA; use --device cpu or auto"):
        resolve_device("cuda:1")


def test_a_misspelt_device_in_the_config_names_the_choices(minimal_config):
    minimal_config["training"]["device"] = "gpu"
    with pytest.raises(ConfigError, match="training.device.*auto, cpu, cuda or cuda:N"):
        mmfuse.Model.from_config(minimal_config)


def test_batches_stay_as_they_are_on_the_cpu_and_results_come_back_fp32():
    batch = {"image": {"pixels": torch.ones(2, 3)}, "ids": [torch.zeros(2)]}
    assert to_device(batch, torch.device("cpu")) is batch
    back = to_cpu({"logits": torch.ones(2, dtype=torch.bfloat16),
                   "tokens": torch.ones(2, dtype=torch.long)})
    assert back["logits"].dtype == torch.float32 and back["tokens"].dtype == torch.long


def test_only_fp16_gets_a_gradient_scaler():
    cpu = torch.device("cpu")
    assert grad_scaler(cpu, "fp16").is_enabled()
    assert not grad_scaler(cpu, "bf16").is_enabled() and not grad_scaler(cpu, "fp32").is_enabled()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_fp32_weights_and_metrics(shapes_qa, minimal_config,
                                                              tmp_path, precision):
    minimal_config["training"].update(epochs=3, precision=precision)
    model = mmfuse.Model.from_config(minimal_config)
    model.fit(shapes_qa["en_train"], out=tmp_path / "run", threads=1)
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    floats = [w for w in weights.values() if w.is_floating_point()]
    assert floats and all(w.dtype == torch.float32 for w in floats)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert isinstance(record["valid_loss"], float) and record["valid_loss"] < 1.0
    answer = mmfuse.Model.load(tmp_path / "run", device="cpu").evaluate(
        shapes_qa["en_test"])["outputs"]["answer"]
    assert answer["accuracy"] > answer["majority_baseline"] + 0.2


def test_cli_device_cuda_without_cuda_exits_with_the_fix(served_run):
    from test_cli import run

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run("evaluate", served_run["run"], "--device", "cuda", check=False)
    assert result.returncode == 2 and "--device cpu or auto" in result.stderr


def test_auto_precision_is_bf16_only_on_hardware_with_bf16_units(monkeypatch):
    from mmfuse import device

    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "native_bf16", lambda d: False)
    assert device.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(device, "native_bf16", lambda d: True)
    assert device.resolve_precision("auto", cpu) == "bf16"
    assert device.resolve_precision("fp16", cpu) == "fp16"
