"""A pretrained causal LM as the decoder against the from-scratch decoder (issue 25).

Task: the ``image_qa`` probe (a coloured shape on a 64-px canvas; questions about its colour,
its side and its height, in English and French, each with a one-word answer), generated with
its own seed. Two configs, both the minimal config (the types of the inputs and the output)
with every other option at its default:

- **scratch**: the default text decoder (a GRU trained from scratch);
- **causal_lm**: ``decoder: {type: causal_lm}``: SmolLM2-135M-Instruct, frozen, with an MLP
  projector from the default image encoder; the question goes into the chat prompt as words.

Each is trained on 10%, 30% and 100% of the training rows. The LM runs get a fixed budget of
``--lm-epochs`` epochs (a CPU step of the LM takes seconds); the scratch runs keep the default
schedule (early stopping). Scores are exact match on held-out rows:

- **training wordings**: the test rows as generated;
- **new wordings**: the same rows with each question replaced by a paraphrase written for
  this benchmark, worded in ways training never used (``PARAPHRASES``);
- **media dropped**: ``evaluate --drop image`` (the blind baseline), beside the majority
  answer's share.

Costs, from the LM run on all rows: seconds per training step, peak RSS of the process, and
generated tokens per second at batch 1 and batch 8 against transformers' own ``generate`` on
the same model and prompts.

Writes ``benchmarks/results/lm.md`` and ``lm.json``.
Run: ``python benchmarks/lm.py [--train 480] [--test 160] [--seed 5] [--lm-epochs 6]``
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, command, machine, markdown_table

import mmfuse
from mmfuse.datasets.probes import generate_probe, minimal_config

PARAPHRASES = {  # qtype -> wordings no training row uses
    "colour": ("Name the hue of the figure.", "Which tint does this object have?",
               "Tell me the figure's colour, please."),
    "horizontal": ("Is the figure nearer the left edge or the right edge?",
                   "Towards which edge, left or right, does the object sit?",
                   "Is the thing placed leftwards or rightwards?"),
    "vertical": ("Is the figure nearer the top edge or the bottom edge?",
                 "Does the object sit high up (top) or low down (bottom)?",
                 "Is the thing placed towards the top or towards the bottom?"),
}
PROMPTS = ("What is the capital of France?", "Write one sentence about the sea.",
           "List three fruits.", "Who wrote Hamlet?", "Name a large animal.",
           "What is two plus three?", "Give a synonym of happy.", "Describe a cat briefly.")


def read_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def reworded(rows: list[dict]) -> list[dict]:
    """The rows with each question replaced by a paraphrase of its type, in turn."""
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        k = seen[row["qtype"]] = seen.get(row["qtype"], -1) + 1
        options = PARAPHRASES[row["qtype"]]
        out.append({**row, "question": options[k % len(options)]})
    return out


def config(kind: str, args: argparse.Namespace) -> dict:
    cfg = minimal_config("image_qa")
    cfg["outputs"][0]["type"] = "text"  # a one-word free-text answer, not a class
    if kind == "causal_lm":
        cfg["outputs"][0]["decoder"] = {"type": "causal_lm", **json.loads(args.decoder)}
        cfg["training"] = {"epochs": args.lm_epochs, "batch_size": 16}
        if args.image_encoder:
            cfg["inputs"][0]["encoder"] = json.loads(args.image_encoder)
    return cfg


def exact(model: mmfuse.Model, table: Path, drop: list[str] | None = None) -> float:
    return model.evaluate(table, drop=drop or [])["outputs"]["answer"]["exact_match"]


def run(kind: str, train: Path, tests: dict[str, Path], args: argparse.Namespace,
        out: Path) -> dict:
    model = mmfuse.Model.from_config(config(kind, args))
    start = time.perf_counter()
    fitted = model.fit(train, out=out)
    seconds = time.perf_counter() - start
    steps = sum(1 for _ in (out / "metrics.jsonl").open())
    row = {"seconds": round(seconds, 1), "epochs": fitted["epochs"],
           "train_wordings": exact(model, tests["test"]),
           "new_wordings": exact(model, tests["new"]),
           "media_dropped": exact(model, tests["test"], ["image"])}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    row["seconds_per_epoch"] = round(sum(m["epoch_seconds"] for m in metrics) / steps, 2)
    return row, model


def generation_speed(model: mmfuse.Model) -> dict:
    """Generated tokens per second of the bundle's decoder (the image dropped, plain prompts)
    and of transformers' ``generate`` on the same LM and chat prompts, at batch 1 and 8."""
    head = model.pipeline.model.heads["answer"]
    head.options = head.options.model_copy(update={"max_new_tokens": 32})
    tok, lm = head.tokenizer, head.lm
    rows = [{"question": p} for p in PROMPTS]

    def ours(batch: int) -> float:
        start, tokens = time.perf_counter(), 0
        for i in range(0, len(rows), batch):
            out = model.predict(rows[i:i + batch])
            tokens += sum(len(tok.encode(r["answer"]["prediction"])) + 1 for r in out)
        return tokens / (time.perf_counter() - start)

    def reference(batch: int) -> float:
        tok.padding_side = "left"
        start, tokens = time.perf_counter(), 0
        for i in range(0, len(PROMPTS), batch):
            texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True)
                     for p in PROMPTS[i:i + batch]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = lm.generate(**enc, max_new_tokens=32, do_sample=False,
                                  pad_token_id=tok.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            ended = (new == tok.eos_token_id).long().cumsum(1)
            tokens += int(((ended == 0) | ((ended == 1) & (new == tok.eos_token_id))).sum())
        return tokens / (time.perf_counter() - start)

    ours(1)  # warm-up
    result = {"ours_batch1": ours(1), "hf_batch1": reference(1), "ours_batch8": ours(8),
              "hf_batch8": reference(8)}
    return {k: round(v, 1) for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=480)
    parser.add_argument("--test", type=int, default=160)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--lm-epochs", type=int, default=6)
    parser.add_argument("--fractions", default="0.1,0.3,1.0")
    parser.add_argument("--kinds", default="scratch,causal_lm")
    parser.add_argument("--decoder", default="{}", help="causal_lm options (JSON)")
    parser.add_argument("--image-encoder", default=None, help="the LM runs' image encoder "
                        "(JSON); default: the default one")
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict = {"runs": [], "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        summary = generate_probe("image_qa", root / "data", args.train, args.test, args.seed)
        results["majority"] = summary["majority_baseline"]
        train_rows = read_rows(root / "data" / "train.csv")
        tests = {"test": root / "data" / "test.csv",
                 "new": write_rows(root / "data" / "new.csv",
                                   reworded(read_rows(root / "data" / "test.csv")))}
        last = None
        for fraction in [float(f) for f in args.fractions.split(",")]:
            rows = train_rows[: max(1, round(fraction * len(train_rows)))]
            train = write_rows(root / "data" / f"train_{fraction}.csv", rows)
            for kind in args.kinds.split(","):
                row, model = run(kind, train, tests, args, root / f"run_{kind}_{fraction}")
                row.update(kind=kind, fraction=fraction, rows=len(rows))
                print(json.dumps(row), flush=True)
                results["runs"].append(row)
                if kind == "causal_lm":
                    last = model
        results["peak_rss_gb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        if args.no_write:
            return
        results["generation"] = generation_speed(last)
        print(json.dumps(results["generation"]), flush=True)
    write(results)


def write(results: dict) -> None:
    (RESULTS / "lm.json").write_text(json.dumps(results, indent=2) + "\n")
    runs = results["runs"]
    table = markdown_table(
        ["decoder", "training rows", "training wordings", "new wordings", "image dropped",
         "epochs", "s / epoch", "train s"],
        [[r["kind"], r["rows"], f"{r['train_wordings']:.3f}", f"{r['new_wordings']:.3f}",
          f"{r['media_dropped']:.3f}", r["epochs"], r["seconds_per_epoch"], r["seconds"]]
         for r in runs])
    g = results["generation"]
    speed = markdown_table(
        ["batch", "mmfuse tokens/s", "transformers generate tokens/s", "ratio"],
        [[b, g[f"ours_batch{b}"], g[f"hf_batch{b}"],
          f"{g[f'ours_batch{b}'] / g[f'hf_batch{b}']:.2f}"] for b in (1, 8)])
    text = f"""# A pretrained LM as the decoder (issue 25)

{__doc__.split('Writes')[0].strip()}

Majority answer on the test rows: {results['majority']:.3f}.

## Exact match on held-out rows

{table}

## Generation speed (plain prompts, 32 new tokens at most, greedy)

{speed}

Batch 8 against batch 1 (mmfuse): {g['ours_batch8'] / g['ours_batch1']:.2f}x tokens per second.

Peak RSS of the benchmark process (both decoders' runs, evaluation and generation):
{results['peak_rss_gb']} GB.

Command: `{command()}`
Machine: {machine()}
"""
    (RESULTS / "lm.md").write_text(text)


if __name__ == "__main__":
    main()
