"""``text``: a generated text per row (a decoder head, ``heads/text.py``).

Targets: an output tokenizer fitted on the training split, and its exact inverse. A generated
text must come back exactly as written, spaces included: "312" is three digit tokens and no
spaces, "三百一十二" five characters and no spaces, "trois cent douze" three words with a space
before each but the first. So every token records whether a space came before it,
SentencePiece-style: ``"▁cent"`` is "cent" after a space, ``"cent"`` the same word glued to the
previous token. Joining the tokens and turning ``▁`` back into spaces rebuilds the text (runs
of whitespace become one space, and the ends are stripped: see :func:`normalize`).

Tokenizers (``preprocess.tokenizer``):

- ``word``: a run of letters is one token; each digit, each CJK character (ideographs, kana,
  hangul) and each other symbol is a token of its own. Numbers and Chinese are then spelt from a
  small vocabulary, and a number never seen in training can still be written.
- ``char``: every character is a token.

Ids: 0 ``[PAD]``, 1 ``[UNK]`` (a token rarer than ``min_frequency`` or unseen in training),
2 ``[BOS]`` (starts every decoder input), 3 ``[EOS]`` (ends every target), then the vocabulary
by falling frequency. Targets are stored as ``[N, L]`` ids ``[BOS] t_1 .. t_n [EOS]`` padded
with ``[PAD]``; the head's ``max_length`` caps ``n`` (longer targets are cut, and the count of
cut rows is kept in the fitted state).

Metrics: exact match, BLEU and chrF of the generated texts, teacher-forced token accuracy and
loss per token. Explain: the log-probability of the generated text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..config_base import StrictModel
from ..data.table import Table
from ..errors import DataError, require
from ..modalities.base import Column, Preprocessor
from ..registry import HEADS, OUTPUTS
from ..report import plots
from ..report.html import Section, figure, paragraph, table
from .kind import OutputType, Score

if TYPE_CHECKING:
    from torch import nn

    from ..report.collect import Outcomes, ReportData
    from ..specs import InputDims, TargetSpec

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
SPACE = "▁"  # U+2581, marks a token that follows a space
EXAMPLES = 12  # reference / generated pairs shown in the report

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"(\s*)([{_CJK}]|\d|[^\W\d_{_CJK}]+|\S)")
_CHAR = re.compile(r"(\s*)(\S)")


class TextTargetOptions(StrictModel):
    """Text output preprocessing: a tokenizer fitted on the training split's targets."""

    tokenizer: Literal["word", "char"] = Field(
        "word", description="'word': words, single digits, single CJK characters and "
        "punctuation; 'char': every character")
    lowercase: bool = False
    min_frequency: int = Field(1, ge=1, description="rarer tokens become [UNK]")
    max_vocab: int | None = Field(None, gt=4)


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a CJK character (ideograph, kana or hangul)."""
    return re.search(f"[{_CJK}]", text) is not None


def normalize(text: str, lowercase: bool = False) -> str:
    """The form a generated text takes: whitespace runs become one space, ends stripped. The
    space marker ``▁`` counts as a space: tokens carry it, so no token can hold it as text."""
    text = " ".join(str(text).replace(SPACE, " ").split())
    return text.lower() if lowercase else text


def split_tokens(text: str, kind: str = "word") -> list[str]:
    """``text`` as token strings, each marked with ``▁`` if a space came before it."""
    pattern = _WORD if kind == "word" else _CHAR
    tokens = []
    for space, piece in pattern.findall(normalize(text)):
        tokens.append(SPACE + piece if space and tokens else piece)
    return tokens


def join_tokens(tokens: list[str]) -> str:
    """The inverse of :func:`split_tokens`."""
    return "".join(tokens).replace(SPACE, " ").strip()


def decode_ids(vocabulary: list[str], ids: list[int]) -> str:
    """Generated ids (up to ``[EOS]``) back to text; ``[UNK]`` is written as a word of its
    own (whether a space came before the unknown token is not known)."""
    tokens = []
    for i in ids:
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            tokens.append(SPACE + UNK if i == UNK_ID else vocabulary[i])
    return join_tokens(tokens)


class TextTargetPreprocessor(Preprocessor):
    """Target strings <-> id sequences; the vocabulary is learned from the training split."""

    def __init__(self, config: Any) -> None:
        self.name, self.column = config.name, config.column
        self.options = TextTargetOptions.model_validate(config.preprocess)
        self.max_length = int(config.head.get("max_length") or config.head["max_new_tokens"])
        self.labels: list[str] = list(SPECIAL)  # the vocabulary, in id order
        self.truncated = 0

    def normalize(self, text: str) -> str:
        """A reference text as the model would write it (for exact match)."""
        return normalize(text, self.options.lowercase)

    def tokens(self, text: str) -> list[str]:
        return split_tokens(self.normalize(text), self.options.tokenizer)

    def fit(self, table: Table) -> None:
        texts = [v for v in table.column(self.column) if v is not None and str(v).strip()]
        if not texts:
            raise DataError(f"{table.source}: column {self.column!r} has no target texts to "
                            "learn from")
        counts = Counter(t for text in texts for t in self.tokens(str(text)))
        kept = [t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                if c >= self.options.min_frequency]
        if self.options.max_vocab is not None:
            kept = kept[: self.options.max_vocab - len(SPECIAL)]
        self.labels = list(SPECIAL) + kept
        self.truncated = sum(len(self.tokens(str(t))) > self.max_length for t in texts)

    def encode(self, table: Table) -> Column:
        """Ids ``[N, L]``; a row without a target is all ``[PAD]`` (left out of the loss)."""
        lookup = {t: i for i, t in enumerate(self.labels)}
        rows = []
        for value in table.column(self.column):
            if value is None or not str(value).strip():
                rows.append([])
                continue
            ids = [lookup.get(t, UNK_ID) for t in self.tokens(str(value))][: self.max_length]
            rows.append([BOS_ID, *ids, EOS_ID])
        ids = np.full((len(rows), max(2, *(len(r) for r in rows))), PAD_ID, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return Column(None, ids)

    def target_tensor(self, ids: np.ndarray) -> torch.Tensor:
        """The rows' ids, cut to the longest of them (batches hold no all-pad columns)."""
        width = max(2, int((ids != PAD_ID).sum(1).max(initial=0)))
        return torch.from_numpy(np.ascontiguousarray(ids[:, :width]))

    def state(self) -> dict:
        return {"vocabulary": self.labels, "truncated": self.truncated}

    def load_state(self, state: dict) -> None:
        self.labels, self.truncated = list(state["vocabulary"]), int(state["truncated"])


class LMTargetPreprocessor(TextTargetPreprocessor):
    """Target strings -> the ids of a causal LM decoder's own tokenizer (LM id + 4, after
    ``[PAD] [UNK] [BOS] [EOS]``, so batches pad and score as the other decoders' do). Nothing
    is learned from the data: fitting reads the LM's tokenizer, which the state keeps (so
    targets encode without the LM's files)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model = str(config.head["model"])
        self.tokenizer: Any = None  # the LM's fast tokenizer (tokenizers.Tokenizer)

    def fit(self, table: Table) -> None:
        from tokenizers import Tokenizer

        from ..llm.files import load_hf_tokenizer, resolve_lm

        loaded = load_hf_tokenizer(resolve_lm(self.model))
        self.tokenizer = Tokenizer.from_str(loaded.backend_tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        texts = [str(v) for v in table.column(self.column) if v is not None and str(v).strip()]
        if not texts:
            raise DataError(f"{table.source}: column {self.column!r} has no target texts to "
                            "learn from")
        self.truncated = sum(len(ids) > self.max_length for ids in self._lm_ids(texts))

    def _lm_ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer.encode_batch([self.normalize(t) for t in texts],
                                              add_special_tokens=False)
        return [e.ids for e in encoded]

    def encode(self, table: Table) -> Column:
        """Ids ``[N, L]``; a row without a target is all ``[PAD]`` (left out of the loss)."""
        values = [None if v is None or not str(v).strip() else str(v)
                  for v in table.column(self.column)]
        encoded = iter(self._lm_ids([v for v in values if v is not None]))
        rows = [[] if v is None else
                [BOS_ID, *(i + len(SPECIAL) for i in next(encoded)[: self.max_length]), EOS_ID]
                for v in values]
        ids = np.full((len(rows), max(2, *(len(r) for r in rows))), PAD_ID, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return Column(None, ids)

    def state(self) -> dict:
        return {"tokenizer": self.tokenizer.to_str(), "truncated": self.truncated}

    def load_state(self, state: dict) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(state["tokenizer"])
        self.truncated = int(state["truncated"])


def target_preprocessor(config: Any) -> Preprocessor:
    """The text output's target preprocessor: the output's own tokenizer, or a causal LM's."""
    if config.head.get("type") == "causal_lm":
        return LMTargetPreprocessor(config)
    return TextTargetPreprocessor(config)


def token_stats(logits: torch.Tensor | dict, target: torch.Tensor) -> dict[str, np.ndarray]:
    """Per row of teacher-forced logits ``[N, T - 1, V]`` and targets ``[N, T]``: target tokens,
    tokens predicted right, and summed cross-entropy (so subsets can be summed). A causal LM
    decoder gives these per row itself (``{"tokens", "correct", "loss_sum"}``)."""
    if isinstance(logits, dict):
        return {"tokens": logits["tokens"].long().numpy(),
                "correct": logits["correct"].long().numpy(),
                "loss": logits["loss_sum"].double().numpy()}
    gold = target[:, 1: 1 + logits.shape[1]]
    real = gold != PAD_ID
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1),
                           ignore_index=PAD_ID, reduction="none").view(gold.shape)
    return {"tokens": real.sum(1).numpy(),
            "correct": ((logits.argmax(-1) == gold) & real).sum(1).numpy(),
            "loss": (loss * real).sum(1).double().numpy()}


def text_metrics(hypotheses: list[str], references: list[str | None],
                 stats: dict[str, np.ndarray]) -> dict:
    """Exact match, BLEU and chrF of generated texts against references (rows without one are
    left out), and teacher-forced token accuracy and loss per token.

    BLEU and chrF are sacrebleu's corpus scores (0-100). BLEU splits Chinese into characters
    (sacrebleu's ``zh`` tokenizer, the same as ``13a`` elsewhere) when any reference has CJK,
    and uses the effective order: n-gram orders that no hypothesis is long enough to have are
    left out of the geometric mean, so a corpus of three-word texts does not score 0.
    """
    require("sacrebleu", "text", "BLEU and chrF of text outputs")
    from sacrebleu.metrics import BLEU, CHRF

    rows = [i for i, r in enumerate(references) if r]
    hyps, refs = [hypotheses[i] for i in rows], [references[i] for i in rows]
    if not rows:
        nan = float("nan")
        return {"exact_match": nan, "token_accuracy": nan, "bleu": nan, "chrf": nan,
                "loss": nan}
    tokenize = "zh" if any(has_cjk(r) for r in refs) else "13a"
    counted = max(1, int(stats["tokens"][rows].sum()))
    return {
        "exact_match": round(float(np.mean([h == r for h, r in zip(hyps, refs, strict=True)])),
                             6),
        "token_accuracy": round(float(stats["correct"][rows].sum()) / counted, 6),
        "bleu": round(BLEU(tokenize=tokenize, effective_order=True).corpus_score(
            hyps, [refs]).score, 4),
        "chrf": round(CHRF().corpus_score(hyps, [refs]).score, 4),
        "loss": round(float(stats["loss"][rows].sum()) / counted, 6),
    }


def text_scorer(hypotheses: list[str], references: list[str | None],
                stats: dict[str, np.ndarray]) -> Score:
    """The metrics of a text output on any subset of rows."""
    return lambda rows: text_metrics([hypotheses[i] for i in rows],
                                     [references[i] for i in rows],
                                     {k: v[rows] for k, v in stats.items()})


def generated_ids(tokens: torch.Tensor) -> torch.Tensor:
    """The best hypothesis's ids ``[1, T]`` as the decoder wrote them: ``[BOS]`` first, up to
    and including the first ``[EOS]`` (all of them when it stopped at ``max_length``), so the
    text scored is the text generated, not a re-tokenisation of it."""
    ids = tokens.tolist()
    if not ids or ids[0] != BOS_ID:
        ids = [BOS_ID, *ids]
    if EOS_ID in ids[1:]:
        ids = ids[: ids.index(EOS_ID, 1) + 1]
    return torch.tensor([ids], dtype=torch.long)


def sequence_logprob(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per copy, the summed log-probability of ``ids`` ``[1, T]`` under teacher-forced
    ``logits`` ``[m, T - 1, V]`` (padding left out)."""
    gold = ids[:, 1: 1 + logits.shape[1]].expand(logits.shape[0], -1)
    logp = logits.log_softmax(-1).gather(-1, gold.unsqueeze(-1)).squeeze(-1)
    return (logp * (gold != PAD_ID)).sum(-1)


@OUTPUTS.register("text", TextTargetOptions)
class TextOutput(OutputType):
    """A generated text (a decoder reading the fused row and the inputs' tokens)."""

    preprocessor = staticmethod(target_preprocessor)
    main_metric = "bleu"
    causal_lm_head = "causal_lm"
    report_metrics = ("bleu", "chrf", "exact_match", "token_accuracy")
    confidence = "score"

    def build_head(self, output: Any, in_dim: int, spec: TargetSpec,
                   dims: dict[str, InputDims]) -> nn.Module:
        """The decoder, which also attends over the inputs' tokens (``dims``)."""
        return HEADS.build(output.head, in_dim, spec, dims)

    def scorer(self, head, raw: dict, target: np.ndarray, column: list, prep: Any,
               teacher: torch.Tensor | None = None) -> Score:
        """From the generated texts and the teacher-forced logits (``teacher``)."""
        references = [None if v is None else prep.normalize(str(v)) for v in column]
        texts = [h[0][0] for h in head.texts(raw)]
        return text_scorer(texts, references, token_stats(teacher, prep.target_tensor(target)))

    def answer_schema(self, info: dict) -> dict:
        return {"type": "object", "required": ["prediction"], "properties": {
            "prediction": {"type": "string"}, "score": {"type": "number"},
            "hypotheses": {"type": "array", "items": {
                "type": "object", "properties": {"text": {"type": "string"},
                                                 "score": {"type": "number"}}}}}}

    def judge(self, prep: Any, rows: list[dict], table: Table) -> tuple:
        """A text is right when it equals the normalised reference (exact match)."""
        predicted = [str(r["prediction"]) for r in rows]
        truth = [None if v is None else prep.normalize(str(v)) or None
                 for v in table.column(prep.column)]
        right = np.array([t is not None and p == t for p, t in zip(predicted, truth,
                                                                    strict=True)], dtype=bool)
        return predicted, truth, right

    def explain_score(self, predicted: dict) -> tuple[Callable, torch.Tensor]:
        """The generated text's log-probability, teacher-forced on the ids the decoder
        wrote."""
        ids = generated_ids(predicted["tokens"][0, 0])

        def score(out: torch.Tensor | dict) -> torch.Tensor:
            # a causal LM decoder gives each copy's summed cross-entropy itself
            return -out["loss_sum"] if isinstance(out, dict) else sequence_logprob(out, ids)

        return score, ids

    def report_section(self, report: ReportData, name: str) -> Section:
        """BLEU overall and per group, and examples of reference and generated text."""
        metrics = report.evaluation["outputs"][name]
        keys = ("bleu", "chrf", "exact_match", "token_accuracy")
        header = ["group", "rows", "BLEU", "chrF", "exact match", "token accuracy"]
        overall = ("all", report.evaluation["n"], *(metrics[k] for k in keys))
        if report.by:
            groups = report.evaluation["groups"]
            rows = [(g, v["n"], *(v["outputs"][name][k] for k in keys))
                    for g, v in groups.items()]
            parts = [paragraph(f"BLEU (sacrebleu, 0-100) by {report.by}; overall "
                               f"{metrics['bleu']:.2f}."),
                     table([report.by, *header[1:]], [overall, *rows]),
                     figure(plots.bars(list(groups), {"BLEU": [r[2] for r in rows]}, "BLEU",
                                       f"BLEU by {report.by}"), f"BLEU by {report.by}")]
        else:
            parts = [paragraph(f"Overall BLEU (sacrebleu, 0-100): {metrics['bleu']:.2f}. "
                               "Pass --by COLUMN for BLEU per group."),
                     table(header, [overall])]
        parts += ["<h3>Examples</h3>", examples_table(report, report.outcomes[name])]
        return Section(f"output-{name}", f"Output {name} (text)", "\n".join(parts))

    def report_stats(self, report: ReportData, name: str) -> list[str]:
        """Token counts of the references (the output's own tokenizer)."""
        prep = report.model.pipeline.outputs[name]
        lengths = [len(prep.tokens(t)) for t in report.outcomes[name].truth if t is not None]
        if not lengths:
            return [paragraph("No row has a reference text.", note=True)]
        return [paragraph(f"{len(lengths)} reference texts: {np.mean(lengths):.1f} tokens on "
                          f"average (median {np.median(lengths):.0f}, longest {max(lengths)})."),
                figure(plots.histogram(lengths, "tokens"), f"text lengths of {name}")]


def examples_table(report: ReportData, o: Outcomes) -> str:
    """Up to EXAMPLES rows spread over the table (and over the groups, with --by)."""
    rows = np.flatnonzero(o.known)
    if report.groups is not None:
        by_group: dict[str, list[int]] = {}
        for i in rows:
            by_group.setdefault(report.groups[i], []).append(int(i))
        per = max(1, EXAMPLES // max(1, len(by_group)))
        chosen = sorted(i for members in by_group.values() for i in members[:per])[:EXAMPLES]
    else:
        # evenly spread: a fixed step could keep hitting one kind of row (one prompt of two)
        spread = np.unique(np.linspace(0, len(rows) - 1, min(EXAMPLES, len(rows))).round())
        chosen = [int(rows[int(k)]) for k in spread] if len(rows) else []
    if not chosen:
        return paragraph("No row has a reference text.", note=True)
    group_cell = (lambda i: [report.groups[i]]) if report.groups is not None else (lambda i: [])
    header = ["row", *([report.by] if report.by else []), "reference", "generated", "score",
              "exact"]
    lines = [(i, *group_cell(i), o.truth[i], o.predicted[i], float(o.confidence[i]),
              "yes" if o.right[i] else "no") for i in chosen]
    return table(header, lines, caption=f"reference vs generated ({len(chosen)} rows)")
