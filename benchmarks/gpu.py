"""The GPU check: Sort-of-CLEVR's best config on CUDA in fp32 and bf16, beside the CPU.

Measures, on one CUDA device:

- training examples per second of ``examples/sort_of_clevr_best.yaml`` with
  ``training.precision`` fp32 and bf16, and the same model on this machine's CPU (fp32);
- GPU utilisation while it trains (``nvidia-smi`` sampled every 200 ms);
- whether batch preparation keeps the GPU busy: the share of each step's wall time the main
  thread spends preparing batches (decode-cache reads, augmentation, the pinned copy), from the
  ``data_share`` that ``Model.fit`` reports. The next batch is prepared while the GPU still
  runs the current step, so the GPU waits only when this share nears 1 and utilisation drops.

It needs only the repository and a torch with CUDA: ``src/`` is put on ``sys.path``, and the
Python packages mmfuse trains with are installed with pip if missing (from ``--wheels DIR``
when the machine has no index). It generates its own data and stays within ``--minutes`` of
training in all (default 4, so the whole check takes under 5 minutes).

Writes ``benchmarks/results/gpu.md`` and ``gpu.json`` (``--out`` elsewhere).

Run: ``python benchmarks/gpu.py [--minutes 4] [--images 1500] [--wheels DIR]``
``--allow-cpu`` runs the same steps on the CPU (to try the script where there is no GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = {"numpy": "numpy", "yaml": "pyyaml", "pydantic": "pydantic", "typer": "typer",
          "rich": "rich", "PIL": "pillow", "safetensors": "safetensors"}


def set_up(wheels: Path | None) -> None:
    """Import mmfuse from this checkout, installing the packages it trains with if missing."""
    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO / "benchmarks"))
    missing = []
    for module, package in NEEDED.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        source = ["--no-index", "--find-links", str(wheels)] if wheels else []
        print(f"installing {', '.join(missing)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *source, *missing],
                       check=True)


class Utilisation:
    """GPU utilisation samples from ``nvidia-smi`` in a thread (empty without it)."""

    def __init__(self, index: int) -> None:
        self.index, self.samples = index, []
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Utilisation:
        try:
            self.process = subprocess.Popen(
                ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu",
                 "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line))

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()

    def summary(self) -> dict:
        busy = self.samples[len(self.samples) // 5:]  # past start-up and the first epoch
        return {"mean": statistics.mean(busy), "median": statistics.median(busy)} if busy \
            else {"mean": None, "median": None}


def train(train_csv: Path, run: Path, device: str, precision: str, minutes: float,
          threads: int | None = None) -> dict:
    """One time-capped training run; examples per second is the median epoch after the first
    (which pays for start-up: CUDA context, kernel selection)."""
    import torch
    import yaml

    import mmfuse

    config = yaml.safe_load((REPO / "examples" / "sort_of_clevr_best.yaml").read_text())
    config["training"].update({"max_minutes": minutes, "precision": precision, "epochs": 40,
                               "valid_fraction": 0.05})
    model = mmfuse.Model.from_config(config)
    on_gpu = torch.device(device).type == "cuda"
    with Utilisation(torch.device(device).index or 0) if on_gpu else contextlib.nullcontext() \
            as gpu:
        summary = model.fit(train_csv, out=run, device=device, overwrite=True, threads=threads)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["examples_per_second"] for r in records]
    return {"device": device, "precision": precision, "epochs": len(records),
            "examples_per_second": statistics.median(speeds[1:] or speeds),
            "data_share": summary["data_share"], "valid_accuracy":
            summary["best"].get("valid_accuracy"),
            "gpu_utilisation": gpu.summary() if gpu is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="training time in all")
    parser.add_argument("--images", type=int, default=1500, help="Sort-of-CLEVR images")
    parser.add_argument("--wheels", type=Path, help="pip --find-links folder (no index)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run on the CPU when there is no GPU (to try the script)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    set_up(args.wheels)
    import torch

    from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr
    from mmfuse.threads import available_cpus

    device = args.device
    if not torch.cuda.is_available():
        if not args.allow_cpu:
            sys.exit(f"no CUDA device (torch {torch.__version__}); this check needs a GPU "
                     "(--allow-cpu tries the steps on the CPU)")
        device = "cpu"
    hardware = torch.cuda.get_device_name(torch.device(device)) if device != "cpu" else "none"
    share = args.minutes / 3  # fp32, bf16 on the device, fp32 on the CPU
    with tempfile.TemporaryDirectory(prefix="mmfuse-gpu-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        generate_sort_of_clevr(root / "soc", n_train=args.images, n_test=10)
        print(f"generated {args.images} images in {time.perf_counter() - began:.0f}s",
              flush=True)
        runs = []
        for where, precision in ((device, "fp32"), (device, "bf16"), ("cpu", "fp32")):
            runs.append(train(root / "soc" / "train.csv", root / f"{where}-{precision}", where,
                              precision, share))
            print(runs[-1], flush=True)
    cpu_speed = runs[2]["examples_per_second"]
    result = {"gpu": hardware, "torch": torch.__version__,
              "cuda": torch.version.cuda, "cpu": platform.processor() or platform.machine(),
              "cpus": available_cpus(), "images": args.images, "runs": runs,
              "speedup_over_cpu": {f"{r['device']} {r['precision']}":
                                   r["examples_per_second"] / cpu_speed for r in runs}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=1))
    from common import markdown_table

    lines = [
        "# GPU check: Sort-of-CLEVR best config", "",
        f"GPU: {hardware}; torch {torch.__version__} (CUDA {torch.version.cuda}); CPU: "
        f"{result['cpu']}, {result['cpus']} usable CPU(s)", "",
        f"Command: `python benchmarks/gpu.py --minutes {args.minutes:g} --images {args.images}`",
        "", "Examples per second: median training epoch after the first. Data share: the "
        "fraction of step wall time spent preparing batches on the CPU (the GPU waits for data "
        "only when it nears 1).", "",
        markdown_table(
            ["device", "precision", "epochs", "examples/s", "vs CPU", "data share",
             "GPU utilisation (mean %)", "valid accuracy"],
            [[r["device"], r["precision"], r["epochs"], f"{r['examples_per_second']:,.0f}",
              f"{r['examples_per_second'] / cpu_speed:.1f}x", f"{r['data_share']:.2f}",
              (r["gpu_utilisation"] or {}).get("mean") or "-",
              f"{r['valid_accuracy']:.3f}" if r["valid_accuracy"] is not None else "-"]
             for r in runs]), ""]
    (args.out / "gpu.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
