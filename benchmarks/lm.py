"""A pretrained causal LM as the decoder against the from-scratch decoder (issue 25).

Task: the ``image_qa`` probe (a coloured shape on a 64-px canvas; questions about its colour,
its side and its height, in English and French, each with a one-word answer), generated with
its own seed. Every config is the minimal one (the types of the inputs and the output) with
every other option at its default:

- **scratch**: the default text decoder (a GRU trained from scratch);
- **lora**: ``decoder: {type: causal_lm}``: SmolLM2-135M-Instruct with LoRA adapters, a
  pixel-shuffle projector from the default image encoder of such a model (the frozen
  efficientnet_lite0); the question goes into the chat prompt as words;
- **frozen**, **full**: the same with ``lm: frozen`` (the projector alone learns) or
  ``lm: full`` (every LM weight trains; run at ``--full-fractions`` only).

Each is trained on 10%, 30% and 100% of the training rows (``epochs: auto``, early stopping).
Scores are exact match on held-out rows:

- **training wordings**: the test rows as generated;
- **new wordings**: the same rows with each question replaced by a paraphrase written for
  this benchmark, worded in ways training never used (``PARAPHRASES``);
- **image dropped**: ``evaluate --drop image`` (the blind baseline), beside the majority
  answer's share and the best answer that ignores the image (the most common one for the
  question's type).

Then two more tasks, scratch against the default causal LM (``TASKS``): captions of the
``video_caption`` probe's clips, and spoken-numbers translation (speech + prompt).

Costs: training steps per second against a hand-written minimal PyTorch loop doing the same
frozen-LM + projector training (``reference_loop``), generated tokens per second at batch 1
and 8 against transformers' own ``generate`` on the same model and prompts, and the peak RSS
of ``mmfuse train`` with the shipped LM.

Writes ``benchmarks/results/lm.md`` and ``lm.json``.
Run: ``python benchmarks/lm.py [--train 480] [--test 160] [--seed 5]``; ``--only-tasks`` adds
the other tasks to the committed ``lm.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
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


COST_ROWS = 96  # training rows of the speed and memory measurements
LM_KINDS = {"lora": {}, "frozen": {"lm": "frozen"}, "full": {"lm": "full"}}


def config(kind: str, args: argparse.Namespace) -> dict:
    """The minimal config; the LM kinds add ``decoder: {type: causal_lm}`` (with ``lm:``
    where it is not the default) and keep every other option at its default."""
    cfg = minimal_config("image_qa")
    cfg["outputs"][0]["type"] = "text"  # a one-word free-text answer, not a class
    if kind in LM_KINDS:
        cfg["outputs"][0]["decoder"] = {"type": "causal_lm", **LM_KINDS[kind],
                                        **json.loads(args.decoder)}
        if args.lm_epochs:
            cfg["training"] = {"epochs": args.lm_epochs}
        if args.image_encoder:
            cfg["inputs"][0]["encoder"] = json.loads(args.image_encoder)
    training = json.loads(getattr(args, "training", None) or "{}")
    if training:  # every kind, e.g. {"seed": 1} to see how far a run's score is from another's
        cfg["training"] = {**cfg.get("training", {}), **training}
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


TASKS = {  # name -> (what it is, the media input, the target column)
    "video_caption": ("video -> caption (the video_caption probe: 'the red dot moves left')",
                      "video", "caption"),
    "spoken_numbers": ("speech + prompt -> French, Chinese or digits (spoken-numbers)",
                       "audio", "target"),
}


def task_tables(name: str, folder: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    if name == "spoken_numbers":
        from mmfuse.datasets.spoken_numbers import generate_spoken_numbers

        generate_spoken_numbers(folder, args.task_train // 3, args.task_test // 3, args.seed)
    else:
        generate_probe(name, folder, args.task_train, args.task_test, args.seed)
    return folder / "train.csv", folder / "test.csv"


def task_config(name: str, kind: str) -> dict:
    """The minimal config of the task (its inputs' and output's types); the LM kind adds
    ``decoder: {type: causal_lm}``."""
    if name == "spoken_numbers":
        cfg = {"inputs": [{"name": "audio", "type": "audio"},
                          {"name": "prompt", "type": "text"}],
               "outputs": [{"name": "target", "type": "text"}]}
    else:
        cfg = minimal_config(name)
    if kind in LM_KINDS:
        cfg["outputs"][0]["decoder"] = {"type": "causal_lm", **LM_KINDS[kind]}
    return cfg


def other_task(name: str, kind: str, root: Path, args: argparse.Namespace) -> dict:
    """Exact match, BLEU and chrF on the task's test rows, and with its media dropped."""
    train, test = task_tables(name, root / name, args) if not (root / name).exists() else \
        (root / name / "train.csv", root / name / "test.csv")
    _, media, target = TASKS[name]
    model = mmfuse.Model.from_config(task_config(name, kind))
    start = time.perf_counter()
    fitted = model.fit(train, out=root / f"run_{name}_{kind}")
    seconds = time.perf_counter() - start
    full = model.evaluate(test)["outputs"][target]
    blind = model.evaluate(test, drop=[media])["outputs"][target]
    return {"task": name, "kind": kind, "rows": len(read_rows(train)),
            "epochs": fitted["epochs"], "seconds": round(seconds, 1),
            "exact_match": full["exact_match"], "bleu": full["bleu"], "chrf": full["chrf"],
            "dropped_exact_match": blind["exact_match"], "dropped_bleu": blind["bleu"]}


def training_speed(train: Path, args: argparse.Namespace, out: Path
                   ) -> tuple[dict, mmfuse.Model]:
    """Steps per second of mmfuse's frozen-LM + projector training against a hand-written
    PyTorch loop doing the same (``reference_loop``): same LM, same image tokens (the frozen
    encoder's cached features), same projector (mlp), batches, threads and precision (fp32);
    and mmfuse's steps per second at its defaults (``precision: auto``, bf16 on this CPU, and
    gradient checkpointing)."""
    def fit(folder: Path, **same_as_reference) -> tuple[float, mmfuse.Model]:
        cfg = config("frozen", args)
        cfg["outputs"][0]["decoder"]["projector"] = "mlp"
        if same_as_reference:
            cfg["outputs"][0]["decoder"]["gradient_checkpointing"] = False
        cfg["training"] = {"epochs": 1 + args.speed_epochs, "valid_fraction": 0,
                           "early_stopping_patience": None, **same_as_reference}
        model = mmfuse.Model.from_config(cfg)
        model.fit(train, out=folder)
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
        # epoch 1 also caches the frozen encoder's features; the others run projector and LM
        rate = sum(m["examples_per_second"] for m in metrics[1:]) / len(metrics[1:])
        return rate / model.config.training.batch_size, model

    ours, model = fit(out / "fp32", precision="fp32")
    pipeline = model.pipeline
    data = pipeline.encode(read_rows_table(train))
    inputs, _ = pipeline.batch(data, torch.arange(len(data)).numpy())
    with torch.no_grad():
        image = pipeline.model.features(inputs)["image"].tokens.float()
    head = pipeline.model.heads["answer"]
    rows = read_rows(train)
    theirs = reference_loop(head.base, head.tokenizer, image, [r["question"] for r in rows],
                            [r["answer"] for r in rows], batch=model.config.training.batch_size,
                            steps=args.speed_epochs * math.ceil(len(rows) / 16), dtype=None)
    defaults, _ = fit(out / "defaults")  # bf16 where it pays, gradient checkpointing
    return {"mmfuse_steps_per_second": round(ours, 4),
            "reference_steps_per_second": round(theirs, 4),
            "ratio": round(ours / theirs, 3), "auto_precision": resolved_precision(),
            "mmfuse_default_steps_per_second": round(defaults, 4),
            "image_tokens": int(image.shape[1])}, model


def training_rss(train: Path, args: argparse.Namespace, out: Path) -> float:
    """Peak RSS (GB) of ``mmfuse train`` in its own process, on the LM runs' config with the
    shipped LM."""
    import subprocess
    import sys

    import yaml

    cfg = config("lora", args)
    cfg["training"] = {"epochs": 1}
    path = out.parent / "rss.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # The child reports its own peak, VmHWM: the high-water mark of the memory it runs in.
    # Not this process's RUSAGE_CHILDREN (it also holds workers forked from this large
    # process), nor the child's ru_maxrss (Linux carries the high-water mark of the forked
    # copy of this process across exec: 9.29 GB read where the training took 2.15 GB).
    probe = ("import re, sys; from pathlib import Path; from mmfuse.cli import main\n"
             "sys.argv[0] = 'mmfuse'\ntry:\n    main()\nfinally:\n"
             "    print('PEAK', re.search(r'VmHWM:\\s+(\\d+)', "
             "Path('/proc/self/status').read_text())[1])")
    done = subprocess.run([sys.executable, "-c", probe, "train", str(path), "--data",
                           str(train), "--out", str(out)], check=True, capture_output=True,
                          text=True)
    peak = int(done.stdout.rsplit("PEAK", 1)[1])
    return round(peak / 2**20, 2)


def resolved_precision() -> str:
    from mmfuse.device import resolve_precision

    return resolve_precision("auto", torch.device("cpu"))


def read_rows_table(path: Path):
    from mmfuse.data.table import read_table

    return read_table(path)


def reference_loop(lm, tokenizer, image: torch.Tensor, questions: list[str],
                   answers: list[str], batch: int, steps: int,
                   dtype: torch.dtype | None) -> float:
    """A minimal hand-written LLaVA training loop: the LM frozen, a two-layer MLP projector
    learning, each row ``chat(<image tokens>\n question) answer</s>`` with the loss on the
    answer (transformers' ``labels``). Returns steps per second (the first step left out)."""
    from torch import nn

    width = lm.config.hidden_size
    projector = nn.Sequential(nn.Linear(image.shape[-1], width), nn.GELU(),
                              nn.Linear(width, width))
    optimizer = torch.optim.AdamW(projector.parameters(), lr=1e-3)
    for p in lm.parameters():
        p.requires_grad_(False)
    embed = lm.get_input_embeddings()
    pieces = []
    for question, answer in zip(questions, answers, strict=True):
        text = tokenizer.apply_chat_template([{"role": "user", "content": "<IMG>\n" + question}],
                                             tokenize=False, add_generation_prompt=True)
        before, after = text.split("<IMG>")
        pieces.append((tokenizer.encode(before, add_special_tokens=False),
                       tokenizer.encode(after, add_special_tokens=False),
                       tokenizer.encode(answer, add_special_tokens=False)
                       + [tokenizer.eos_token_id]))
    seconds = []
    for step in range(steps + 1):
        began = time.perf_counter()
        chosen = [(step * batch + i) % len(pieces) for i in range(batch)]
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            projected = projector(image[chosen])
            rows, labels = [], []
            for j, i in enumerate(chosen):
                before, after, answer = pieces[i]
                rows.append(torch.cat([embed(torch.tensor(before)), projected[j],
                                       embed(torch.tensor(after + answer))]))
                labels.append([-100] * (len(rows[-1]) - len(answer)) + answer)
            length = max(len(r) for r in rows)
            embeds = torch.stack([nn.functional.pad(r, (0, 0, 0, length - len(r)))
                                  for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
            target = torch.tensor([t + [-100] * (length - len(t)) for t in labels])
            loss = lm(inputs_embeds=embeds, attention_mask=mask, labels=target).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - began)
    return len(seconds[1:]) / sum(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=480)
    parser.add_argument("--test", type=int, default=160)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--lm-epochs", type=int, default=None,
                        help="epochs of the LM runs; default: the default (auto)")
    parser.add_argument("--fractions", default="0.1,0.3,1.0")
    parser.add_argument("--kinds", default="scratch,lora,frozen,full",
                        help="scratch (the default GRU decoder) and the causal_lm runs: "
                        "lora (the default), frozen, full")
    parser.add_argument("--full-fractions", default="0.1", help="fractions with a full run")
    parser.add_argument("--decoder", default="{}", help="causal_lm options (JSON)")
    parser.add_argument("--training", default=None, help="training options of every run "
                        "(JSON), e.g. '{\"seed\": 1}'")
    parser.add_argument("--image-encoder", default=None, help="the LM runs' image encoder "
                        "(JSON); default: the default one")
    parser.add_argument("--speed-epochs", type=int, default=2, help="epochs timed against "
                        "the hand-written loop (after the one that caches features)")
    parser.add_argument("--costs-only", action="store_true", help="only the training speed, "
                        "peak RSS and generation speed")
    parser.add_argument("--tasks", default="video_caption,spoken_numbers",
                        help="the other tasks (scratch against the default causal_lm): "
                        + ", ".join(TASKS))
    parser.add_argument("--task-train", type=int, default=150, help="their training rows "
                        "(150 keeps each task's LoRA run near 4 minutes on a 2-core CPU)")
    parser.add_argument("--task-test", type=int, default=45, help="their test rows")
    parser.add_argument("--only-tasks", action="store_true", help="run only the other tasks "
                        "and add them to the committed lm.json")
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    parser.add_argument("--rss-only", action="store_true", help="measure only the peak RSS of "
                        "training again and write it into the committed lm.json and lm.md")
    parser.add_argument("--no-costs", action="store_true", help="only the image-question runs, "
                        "printed (with --tasks ''), e.g. to compare decoder options")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        if args.rss_only:
            return remeasure_rss(Path(tmp), args)
        if args.only_tasks:
            results = json.loads((RESULTS / "lm.json").read_text())
        else:
            results = image_qa(Path(tmp), args)
        if not args.costs_only:
            results["tasks"] = [other_task(name, kind, Path(tmp), args)
                                for name in filter(None, args.tasks.split(","))
                                for kind in ("scratch", "lora")]
            for row in results["tasks"]:
                print(json.dumps(row), flush=True)
    if not (args.no_write or args.costs_only or args.no_costs):
        results["args"] = vars(args) if not args.only_tasks else results["args"]
        if results.get("tasks"):
            results["tasks_command"] = command()
        write(results)


def costs_table(root: Path, train_rows: list[dict]) -> Path:
    """The first ``COST_ROWS`` training rows, on which the costs are measured."""
    return write_rows(root / "data" / "costs.csv", train_rows[:COST_ROWS])


def remeasure_rss(root: Path, args: argparse.Namespace) -> None:
    """The peak RSS of training on the costs' rows, into the committed results."""
    results = json.loads((RESULTS / "lm.json").read_text())
    generate_probe("image_qa", root / "data", args.train, args.test, args.seed)
    costs = costs_table(root, read_rows(root / "data" / "train.csv"))
    results["training_peak_rss_gb"] = training_rss(costs, args, root / "rss")
    results["rss_command"] = command()
    print(json.dumps({"training_peak_rss_gb": results["training_peak_rss_gb"]}), flush=True)
    write(results)


def image_qa(root: Path, args: argparse.Namespace) -> dict:
    """The image-question runs at each fraction, then the costs."""
    results: dict = {"runs": [], "args": vars(args)}
    summary = generate_probe("image_qa", root / "data", args.train, args.test, args.seed)
    results["majority"] = summary["majority_baseline"]
    train_rows, test_rows = (read_rows(root / "data" / f"{s}.csv") for s in ("train", "test"))
    results["blind"] = blind_baseline(train_rows, test_rows)
    tests = {"test": root / "data" / "test.csv",
             "new": write_rows(root / "data" / "new.csv", reworded(test_rows))}
    for fraction in [] if args.costs_only else [float(f) for f in args.fractions.split(",")]:
        rows = train_rows[: max(1, round(fraction * len(train_rows)))]
        train = write_rows(root / "data" / f"train_{fraction}.csv", rows)
        for kind in args.kinds.split(","):
            if kind == "full" and str(fraction) not in args.full_fractions.split(","):
                continue
            row, _ = run(kind, train, tests, args, root / f"run_{kind}_{fraction}")
            row.update(kind=kind, fraction=fraction, rows=len(rows))
            print(json.dumps(row), flush=True)
            results["runs"].append(row)
    if args.no_costs:
        return results
    costs = costs_table(root, train_rows)
    results["training_speed"], model = training_speed(costs, args, root / "speed")
    print(json.dumps(results["training_speed"]), flush=True)
    results["generation"] = generation_speed(model)
    print(json.dumps(results["generation"]), flush=True)
    del model
    results["training_peak_rss_gb"] = training_rss(costs, args, root / "rss")
    print(json.dumps({"training_peak_rss_gb": results["training_peak_rss_gb"]}), flush=True)
    return results


def blind_baseline(train: list[dict], test: list[dict]) -> float:
    """Exact match of the best answer that does not look at the image: the training rows'
    most common answer for the question's type (its wording tells the type)."""
    from collections import Counter

    best = {q: Counter(r["answer"] for r in train if r["qtype"] == q).most_common(1)[0][0]
            for q in {r["qtype"] for r in train}}
    return round(sum(best.get(r["qtype"]) == r["answer"] for r in test) / len(test), 4)


def write(results: dict) -> None:
    (RESULTS / "lm.json").write_text(json.dumps(results, indent=2) + "\n")
    runs = results["runs"]
    table = markdown_table(
        ["decoder", "training rows", "training wordings", "new wordings", "image dropped",
         "epochs", "s / epoch", "train s"],
        [[r["kind"], r["rows"], f"{r['train_wordings']:.3f}", f"{r['new_wordings']:.3f}",
          f"{r['media_dropped']:.3f}", r["epochs"], r["seconds_per_epoch"], r["seconds"]]
         for r in runs])
    gains = []
    for fraction in sorted({r["fraction"] for r in runs}):
        by = {r["kind"]: r for r in runs if r["fraction"] == fraction}
        if "scratch" in by and "lora" in by:
            lm, scratch = by["lora"], by["scratch"]
            gains.append([lm["rows"]] + [f"{100 * (lm[k] - scratch[k]):+.1f}"
                            for k in ("new_wordings", "train_wordings")])
    gain = markdown_table(["training rows", "new wordings (points)", "training wordings (points)"],
                          gains)
    g, t = results["generation"], results["training_speed"]
    speed = markdown_table(
        ["batch", "mmfuse tokens/s", "transformers generate tokens/s", "ratio"],
        [[b, g[f"ours_batch{b}"], g[f"hf_batch{b}"],
          f"{g[f'ours_batch{b}'] / g[f'hf_batch{b}']:.2f}"] for b in (1, 8)])
    tasks = "Not run in this run (`--only-tasks` adds them)."
    if results.get("tasks"):
        tasks = "Scratch decoder against the default causal LM on each task's held-out rows " \
            "(its minimal config, every other option at its default; " \
            f"`{results.get('tasks_command') or command()}`).\n\n" + markdown_table(
            ["task", "decoder", "training rows", "epochs", "train s", "exact match", "BLEU", "chrF",
             "media dropped: exact match", "media dropped: BLEU"],
            [[TASKS[r["task"]][0], r["kind"], r["rows"], r["epochs"], r["seconds"],
              f"{r['exact_match']:.3f}", f"{r['bleu']:.1f}", f"{r['chrf']:.1f}",
              f"{r['dropped_exact_match']:.3f}", f"{r['dropped_bleu']:.1f}"]
             for r in results["tasks"]])
    rss_note = f" (measured again by `{results['rss_command']}`)" \
        if results.get("rss_command") else ""
    text = f"""# A pretrained LM as the decoder (issue 25)

{__doc__.split('Writes')[0].strip()}

Majority answer on the test rows: {results['majority']:.3f}; the most common answer for each
question type (colour, left/right, top/bottom; the best an answer that ignores the image can
do): {results['blind']:.3f}.

## Image + question: exact match on held-out rows

"lora" is `decoder: {{type: causal_lm}}` at its defaults; "frozen" and "full" set `lm:`.

{table}

The default causal LM (lora) against the from-scratch decoder, in exact-match points:

{gain}

## Captioning and speech translation

{tasks}

## Training speed (frozen LM + mlp projector, {t['image_tokens']} image tokens, 16 rows a step)

mmfuse against a hand-written minimal PyTorch loop (`reference_loop`: the same LM, image tokens,
projector, batches and threads, fp32, no gradient checkpointing; transformers' `labels` loss):
{t['mmfuse_steps_per_second']} against {t['reference_steps_per_second']} steps per second,
**{t['ratio']:.2f}x**. mmfuse runs the LM's output layer on the answer's positions alone.
At mmfuse's defaults for an LM model (precision auto = {t['auto_precision']} here, gradient
checkpointing): {t['mmfuse_default_steps_per_second']} steps per second
({t['mmfuse_default_steps_per_second'] / t['mmfuse_steps_per_second']:.2f}x the fp32 run).

## Generation speed (plain prompts, 32 new tokens at most, greedy)

{speed}

Batch 8 against batch 1 (mmfuse): {g['ours_batch8'] / g['ours_batch1']:.2f}x tokens per second.

## Memory

Peak RSS of `mmfuse train` (its own process) with the shipped LM at the defaults (LoRA, 16 rows
a batch, precision auto, gradient checkpointing, efficientnet_lite0 image features), one epoch:
**{results['training_peak_rss_gb']} GB**{rss_note}.

Command: `{results.get('command') or command()}`
Machine: {machine()}
"""
    (RESULTS / "lm.md").write_text(text)


if __name__ == "__main__":
    main()
