"""``causal_lm``: a pretrained causal language model writes the text output, reading the
row's text inputs in its prompt and its other inputs as projected tokens (LLaVA-style).

Liu et al. 2023, "Visual Instruction Tuning" (LLaVA): an encoder's tokens ``x_i`` become
``P(x_i)`` in the LM's embedding space (``llm/projectors.py``) and sit in the prompt where the
template places the input; text inputs are tokenised by the LM's own tokenizer and read as
words (``llm/prompt.py``). The LM then reads ``[prompt; answer]`` and is trained with
cross-entropy on the answer's tokens alone (the prompt and the media positions are masked):

    loss = - sum_t log p(a_t | prompt, a_<t) / |a|,    a ending with the LM's end token.

``lm:`` what of the LM trains: ``frozen`` (the projector alone learns; the LM keeps its
language), ``lora`` (Hu et al. 2021, low-rank adapters on the attention projections, through
``peft``; merged into the weights for inference) or ``full``. A bundle holds the projector and
the adapters; the LM's own weights only with ``full``. It names the LM by ``model`` and the
sha256 of its files (the buffer ``lm_sha256``, checked when the bundle loads), and holds a copy
of the files (``lm/``) when they are not a shipped package (``embed_lm``).

Generation runs transformers' ``generate`` on the prompt's embeddings (left-padded batches,
KV cache): greedy, beam or sampling, with ``max_new_tokens`` and ``stop`` strings. The answer
has the shape of the from-scratch decoders' (``heads/text.py``): ``{"tokens" [B, H, T],
"scores" [B, H]}`` in the output's id space (LM id + 4, after ``[PAD] [UNK] [BOS] [EOS]``).

Shapes: inputs' Features and the text inputs' ids -> per-row teacher-forced statistics
``{"loss_sum", "tokens", "correct"}`` (each ``[B]``) given a target ``[B, T]``, else the
generated ``{"tokens", "scores"}``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..config_base import Options, StrictModel
from ..errors import require
from ..llm.files import (
    DEFAULT_LM,
    bundle_files,
    check_identity,
    lm_source,
    load_hf_tokenizer,
    load_lm,
)
from ..llm.projectors import PROJECTORS
from ..llm.prompt import Piece, prompt_pieces
from ..outputs.text import BOS_ID, EOS_ID, PAD_ID
from ..registry import HEADS
from ..specs import InputDims, TargetSpec
from .base import Head, HeadTraits
from .control import EndedRows, TokenStreamer, control_for, listener_for, options_for

SHIFT = 4  # output ids are LM ids + 4: [PAD] [UNK] [BOS] [EOS] come first
IGNORE = -100


class LoraOptions(StrictModel):
    """Low-rank adapters (peft's ``LoraConfig``)."""

    r: int = Field(16, ge=1, description="rank of each adapter")
    alpha: float = Field(32.0, gt=0, description="scale: the update is (alpha / r) B A")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="the LM's modules that get adapters (default: the attention projections)")


class LMOptions(Options):
    """What every head on a causal LM shares: the LM, the prompt, the projectors, training."""

    model: str = Field(DEFAULT_LM, description="the shipped smollm2-135m-instruct, a .gguf "
                       "file or a local Hugging Face folder (llm/files.py)")
    prompt: str | None = Field(
        None, description="template with {input} places; default: the media, then the text "
        "inputs, one per line")
    chat_template: bool = Field(True, description="wrap the prompt in the LM's chat template")
    system: str | None = Field(None, description="system message; None keeps the chat "
                               "template's own")
    projector: Literal["linear", "mlp", "pixel_shuffle", "resampler"] = Field(
        "pixel_shuffle", description="how an input's tokens reach the LM (README: 'A "
        "pretrained language model'): pixel_shuffle merges scale x scale neighbours, so the "
        "LM reads a quarter of the tokens")
    tokens: int = Field(16, ge=1, description="resampler: learned queries (tokens per input)")
    scale: int = Field(2, ge=1, description="pixel_shuffle: merge scale x scale tokens")
    lm: Literal["frozen", "lora", "full"] = Field(
        "lora", description="what of the LM trains (README: 'A pretrained language model')")
    lora: LoraOptions = Field(default_factory=LoraOptions)
    gradient_checkpointing: bool = Field(
        True, description="recompute each LM layer's activations in the backward pass: on "
        "SmolLM2-135M, batch 16, peak RSS 1.9 GB instead of 2.9 GB (bf16; 2.3 against 4.3 GB in "
        "fp32) for about 20% more time per step")
    embed_lm: bool | None = Field(None, description="copy the LM's files into the bundle; "
                                  "default: when it is not a shipped package")


class CausalLMOptions(LMOptions):
    """A causal LM writing a text output: the LM's options and how it generates."""

    decoding: Literal["greedy", "beam", "sample"] = "greedy"
    beam_width: int = Field(4, ge=1)
    hypotheses: int = Field(1, ge=1, description="beam: hypotheses returned per row")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="sample: 0 keeps every token")
    seed: int | None = Field(None, description="sample: the generator's seed per call")
    max_new_tokens: int = Field(48, ge=1, description="most tokens generated (and kept per "
                                "training target)")
    stop: list[str] = Field(default_factory=list, description="generation ends after any of "
                            "these strings")
    min_tokens: int = Field(0, ge=0, description="hold the end token back for this many "
                            "tokens")

    @model_validator(mode="after")
    def _consistent(self) -> CausalLMOptions:
        if self.decoding == "beam" and self.hypotheses > self.beam_width:
            raise ValueError(f"hypotheses={self.hypotheses} is more than beam_width="
                             f"{self.beam_width} can give; lower it or widen the beam")
        if self.decoding != "beam" and self.hypotheses > 1:
            raise ValueError("hypotheses > 1 needs decoding: beam")
        return self


@HEADS.register("causal_lm", CausalLMOptions)
class CausalLMHead(Head):
    """A pretrained causal LM reading the text inputs as words and the others as projected
    tokens (see the module docstring)."""

    traits = HeadTraits(generates=True, needs_teacher=True, reads_inputs=True, pretrained=True)
    needs_input_dims = True

    def __init__(self, options: LMOptions, in_dim: int, spec: TargetSpec,
                 input_dims: dict[str, InputDims] | None = None) -> None:
        super().__init__()
        from ..encoders.base import reading_bundle

        self.options = options
        self.labels = list(spec.labels)
        self.source = lm_source(options.model)
        self.sha256 = self.source.sha256()
        self.register_buffer("lm_sha256", torch.tensor(list(bytes.fromhex(self.sha256)),
                                                       dtype=torch.uint8))
        # a bundle of a fully trained LM holds all of its weights
        self.lm = load_lm(self.source, weights=not (reading_bundle() and options.lm == "full"))
        self.tokenizer = load_hf_tokenizer(self.source)
        self.end_id = int(self.tokenizer.eos_token_id)
        hidden = self.lm.get_input_embeddings().embedding_dim
        dims = input_dims or {}
        self.pieces = prompt_pieces(options.prompt or "", self.tokenizer,
                                    options.chat_template, options.system)
        self.text_inputs = [n for n, d in dims.items() if d.modality == "text"]
        # each text input's word embeddings pass here (explain scales them: attribution)
        self.word_features = nn.ModuleDict({n: nn.Identity() for n in self.text_inputs})
        self.projectors = nn.ModuleDict({
            name: PROJECTORS[options.projector](d.token_dim, hidden, tokens=options.tokens,
                                                scale=options.scale,
                                                grid=d.modality == "image")
            for name, d in dims.items() if d.modality != "text"})
        self._prepare_lm()

    def bundle_files(self) -> dict[str, Path]:
        """The LM's files, when the bundle embeds them (``lm/...``)."""
        embed = (not self.source.shipped) if self.options.embed_lm is None \
            else self.options.embed_lm
        return bundle_files(self.source) if embed else {}

    # --- the LM and what of it trains ------------------------------------------------------

    def _prepare_lm(self) -> None:
        o = self.options
        if o.lm == "lora":
            peft = require("peft", "llm", "LoRA on a causal_lm decoder")
            config = peft.LoraConfig(r=o.lora.r, lora_alpha=o.lora.alpha,
                                     lora_dropout=o.lora.dropout,
                                     target_modules=list(o.lora.target_modules), bias="none")
            with warnings.catch_warnings():  # peft asks transformers 5 for a deprecated name
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
                self.lm = peft.get_peft_model(self.lm, config)  # freezes the LM's own weights
        else:
            self.lm.requires_grad_(o.lm == "full")
        if o.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(self.base, "activation_checkpointing_enable"):  # transformers >= 5.x
                self.base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self._merged = False
        self._register_state_dict_hook(_drop_base_weights)
        # adapters are loaded unmerged, then merged again for inference (see train())
        self._register_load_state_dict_pre_hook(_unmerge_before_loading, with_module=True)
        self.register_load_state_dict_post_hook(_after_loading)

    @property
    def base(self) -> nn.Module:
        """The transformers model (inside peft's wrapper with ``lm: lora``)."""
        return self.lm.get_base_model() if self.options.lm == "lora" else self.lm

    def stored(self, key: str) -> bool:
        """Whether a state-dict key of this head is saved: everything but the LM's own frozen
        weights (the LM file holds those)."""
        if not key.startswith("lm."):
            return True
        return self.options.lm == "full" or "lora_" in key

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The LM's own weights (``lm: full``), trained at ``pretrained_lr_multiplier`` times the
        rate; the projector and LoRA adapters are new and train at the full rate."""
        return list(self.base.parameters()) if self.options.lm == "full" else []

    def train(self, mode: bool = True) -> CausalLMHead:
        """LoRA adapters are merged into the weights for inference, and taken out again for
        training."""
        super().train(mode)
        self.merge(not mode)
        return self

    def merge(self, merged: bool) -> None:
        """Merge the LoRA adapters into the LM's weights (one matmul less per layer and
        token), or take them out again."""
        if self.options.lm != "lora" or merged == self._merged:
            return
        # in fp32 even inside an autocast region (validation switches to eval under it): a
        # bf16 delta added and an fp32 one taken out would move the LM's own weights
        device = self.lm_sha256.device.type
        with torch.autocast(device_type=device, enabled=False):
            if merged:
                self.lm.merge_adapter()
            else:
                self.lm.unmerge_adapter()
        self._merged = merged

    # --- the prompt ------------------------------------------------------------------------

    def _embed(self, ids: list[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long, device=device)
        return self.lm.get_input_embeddings()(ids)

    def _row_parts(self, b: int, features: dict, inputs: dict, projected: dict,
                   device: torch.device) -> list[torch.Tensor]:
        """Row ``b``'s prompt as embedding blocks ``[n, H]``; a missing input leaves no
        block."""
        parts = []
        for piece in self.pieces:
            if piece.ids:
                parts.append(self._embed(list(piece.ids), device))
            elif piece.input in self.text_inputs:
                item = int(inputs[piece.input]["index"][b])
                if item >= 0:
                    tensors = inputs[piece.input]
                    ids = tensors["ids"][item][tensors["mask"][item]]
                    parts.append(self.word_features[piece.input](self._embed(ids, device)))
            else:
                tokens, keep = projected[piece.input]
                if bool(features[piece.input].present[b]):
                    parts.append(tokens[b][keep[b]])
        return parts

    def prompts(self, features: dict, inputs: dict, device: torch.device
                ) -> list[torch.Tensor]:
        """Each row's prompt as embeddings ``[n_b, H]`` (an empty prompt reads the end
        token)."""
        projected = {name: proj(features[name].tokens, features[name].mask)
                     for name, proj in self.projectors.items()}
        batch = next(iter(features.values())).present.shape[0]
        rows = [self._row_parts(b, features, inputs, projected, device) for b in range(batch)]
        return [torch.cat(p) if p else self._embed([self.end_id], device) for p in rows]

    @staticmethod
    def _left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``[n_b, H]`` as one left-padded batch ``[B, L, H]`` and its attention mask."""
        length = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
        for b, r in enumerate(rows):
            embeds[b, length - r.shape[0]:] = r
            mask[b, length - r.shape[0]:] = 1
        return embeds, mask

    def answer_ids(self, target: torch.Tensor) -> list[list[int]]:
        """Each row's answer in LM ids, ending with the LM's end token ([] for no target)."""
        rows = []
        for ids in target.tolist():
            answer = [i - SHIFT for i in ids if i >= SHIFT]
            rows.append([*answer, self.end_id] if ids and ids[0] == BOS_ID and len(ids) > 1
                        and ids[1] != PAD_ID else [])
        return rows

    # --- forward: teacher forcing and generation -------------------------------------------

    def forward(self, fused: torch.Tensor, features: dict, target: torch.Tensor | None = None,
                inputs: dict | None = None):
        """Per-row teacher-forced statistics for ``target``, or the generated texts."""
        prompts = self.prompts(features, inputs or {}, fused.device)
        if target is None:
            return self.generate(prompts)
        return self.continuations(prompts, self.answer_ids(target))

    def continuations(self, prompts: list[torch.Tensor], answers: list[list[int]]
                      ) -> dict[str, torch.Tensor]:
        """Teacher-forced statistics of each prompt followed by its answer (LM ids)."""
        device = prompts[0].device
        rows = [torch.cat([p, self._embed(a, device)]) if a else p
                for p, a in zip(prompts, answers, strict=True)]
        embeds, mask = self._left_pad(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.base.get_decoder()(inputs_embeds=embeds, attention_mask=mask,
                                         position_ids=positions, use_cache=False)
        return self._answer_stats(hidden.last_hidden_state, answers, device)

    def _answer_stats(self, hidden: torch.Tensor, answers: list[list[int]],
                      device: torch.device) -> dict[str, torch.Tensor]:
        """Cross-entropy, tokens and right guesses of each row's answer; the LM's output layer
        runs on the answer's positions alone (its vocabulary is most of the cost)."""
        width = max(1, max(len(a) for a in answers))
        gold = torch.full((len(answers), width), IGNORE, dtype=torch.long, device=device)
        for b, a in enumerate(answers):
            gold[b, : len(a)] = torch.tensor(a, dtype=torch.long, device=device)
        length = hidden.shape[1]
        # the answer is the last len(a) positions; each token is predicted one position before
        start = torch.tensor([length - len(a) - 1 for a in answers], device=device)
        index = (start.unsqueeze(1) + torch.arange(width, device=device)).clamp(0, length - 1)
        states = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        logits = self.base.get_output_embeddings()(states).float()
        loss = F.cross_entropy(logits.transpose(1, 2), gold, ignore_index=IGNORE,
                               reduction="none")
        real = gold != IGNORE
        return {"loss_sum": (loss * real).sum(1), "tokens": real.sum(1).float(),
                "correct": ((logits.argmax(-1) == gold) & real).sum(1).float()}

    @torch.no_grad()
    def generate(self, prompts: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Generated texts as ``{"tokens" [B, H, max_new_tokens + 1], "scores" [B, H]}``."""
        o = options_for(self)  # with this call's updates (heads/control.py)
        control = control_for(self)
        if control is not None:
            control.prompt_tokens = [p.shape[0] for p in prompts]
        embeds, mask = self._left_pad(prompts)
        settings = self.generation_settings(o)
        listener = listener_for(self)
        if listener is not None and o.decoding != "beam":  # generate streams no beams
            ended = torch.zeros(len(prompts), dtype=torch.bool, device=embeds.device)
            settings["streamer"] = TokenStreamer(listener, ended, self.end_id, SHIFT)
            settings["stopping_criteria"] = [EndedRows(ended)]
        seed = contextlib.nullcontext()
        if o.decoding == "sample" and o.seed is not None:
            seed = torch.random.fork_rng(devices=[] if embeds.device.type == "cpu"
                                         else [embeds.device])
        with seed:
            if o.decoding == "sample" and o.seed is not None:
                torch.manual_seed(o.seed)
            out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, **settings)
        return self._pack(out, len(prompts), o)

    def generation_settings(self, o: CausalLMOptions | None = None) -> dict:
        """``generate``'s arguments for the configured decoding (or for ``o``)."""
        o = o or self.options
        transformers = require("transformers", "llm", "a causal_lm decoder")
        config = transformers.GenerationConfig(
            max_new_tokens=o.max_new_tokens, min_new_tokens=o.min_tokens or None,
            do_sample=o.decoding == "sample",
            num_beams=o.beam_width if o.decoding == "beam" else 1,
            num_return_sequences=o.hypotheses if o.decoding == "beam" else 1,
            temperature=o.temperature if o.decoding == "sample" else None,
            top_p=o.top_p if o.decoding == "sample" else None,
            top_k=(o.top_k or None) if o.decoding == "sample" else None,
            eos_token_id=self.end_id, pad_token_id=self.end_id, return_dict_in_generate=True,
            output_scores=True, stop_strings=list(o.stop) or None)
        return {"generation_config": config,
                **({"tokenizer": self.tokenizer} if o.stop else {})}

    def _pack(self, out, batch: int, o: CausalLMOptions) -> dict[str, torch.Tensor]:
        """generate's output in the output's id space, with each text's log-probability
        (beam search: its length-normalised beam score)."""
        hyps = o.hypotheses if o.decoding == "beam" else 1
        sequences = out.sequences
        if o.decoding == "beam":
            scores = out.sequences_scores.float()
        else:
            # each generated token's log-probability under the (processed) step scores
            chosen = sequences[:, -len(out.scores):].unsqueeze(-1)
            steps = torch.stack(out.scores, 1).float().log_softmax(-1).gather(-1, chosen)
            steps = steps.squeeze(-1)
            scores = self._real_sum(steps, sequences)
        rows = []
        for row in sequences.tolist():
            ids = []
            for t in row:
                if t == self.end_id:
                    break
                ids.append(t + SHIFT)
            ids = [*ids[: o.max_new_tokens], EOS_ID]
            rows.append(ids + [PAD_ID] * (o.max_new_tokens + 1 - len(ids)))
        tokens = torch.tensor(rows, dtype=torch.long, device=sequences.device)
        return {"tokens": tokens.view(batch, hyps, -1),
                "scores": scores.view(batch, hyps)}

    def _real_sum(self, steps: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """Sum of the step log-probabilities up to and including the first end token."""
        ended = (sequences == self.end_id).long().cumsum(1)
        real = (ended == 0) | ((ended == 1) & (sequences == self.end_id))
        steps = torch.where(torch.isfinite(steps), steps, torch.zeros_like(steps))
        return (steps.float() * real[:, : steps.shape[1]]).sum(1)

    # --- what the training loop and evaluation ask ---------------------------------------

    @staticmethod
    def loss(stats: dict, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy per answer token (label smoothing does not apply)."""
        return stats["loss_sum"].sum() / stats["tokens"].sum().clamp(min=1)

    @staticmethod
    def accuracy(stats: dict, target: torch.Tensor) -> float:
        """Teacher-forced token accuracy over the answers' tokens."""
        tokens = float(stats["tokens"].sum())
        return float(stats["correct"].sum()) / tokens if tokens else float("nan")

    def decode(self, ids: list[int]) -> str:
        """Output ids (up to ``[EOS]``) as text."""
        lm_ids = []
        for i in ids:
            if i == EOS_ID:
                break
            if i >= SHIFT:
                lm_ids.append(i - SHIFT)
        return " ".join(self.tokenizer.decode(lm_ids, skip_special_tokens=True).split())

    def texts(self, generated: dict) -> list[list[tuple[str, float]]]:
        """Per row, the hypotheses as ``(text, score)``, best first."""
        return [[(self.decode(h), s) for h, s in zip(ids, scores, strict=True)
                 if s > -math.inf]
                for ids, scores in zip(generated["tokens"].tolist(),
                                       generated["scores"].tolist(), strict=True)]

    def describe_lm(self) -> dict:
        """What ``GET /v1/model`` says about the LM under any head on it."""
        o = self.options
        return {"decoder": "causal_lm", "model": o.model, "lm": o.lm, "projector": o.projector}

    def describe(self) -> dict:
        o = self.options
        return {**self.describe_lm(), "decoding": o.decoding, "max_new_tokens": o.max_new_tokens}

    def postprocess(self, generated: dict) -> list[dict]:
        """Per row: the text, its score, and with beam search the top hypotheses."""
        rows = []
        for hypotheses in self.texts(generated):
            row = {"prediction": hypotheses[0][0], "score": round(hypotheses[0][1], 6)}
            if options_for(self).decoding == "beam":
                row["hypotheses"] = [{"text": t, "score": round(s, 6)} for t, s in hypotheses]
            rows.append(row)
        return rows


def _drop_base_weights(module: CausalLMHead, state: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        if not module.stored(key[len(prefix):]):
            del state[key]


def _unmerge_before_loading(module: CausalLMHead, state: dict, prefix: str, *_: object) -> None:
    """The LM must be the one the weights were trained with; and new adapters must not be
    subtracted from weights that hold the old ones."""
    saved = state.get(prefix + "lm_sha256")
    if saved is not None:
        check_identity(module.source, module.sha256, bytes(saved.tolist()).hex())
    module.merge(False)


def _after_loading(module: CausalLMHead, incompatible) -> None:
    """Merge again for inference, and let the LM's own frozen weights be missing: they come
    from its file, not the state dict (a key is missing on purpose when what follows some
    prefix of it is one of them)."""
    module.merge(not module.training)
    local = [name for name, _ in module.named_parameters(remove_duplicate=False)]
    unstored = {name for name in local if not module.stored(name)}
    for key in list(incompatible.missing_keys):
        dots = [i for i, c in enumerate(key) if c == "."]
        if key in unstored or any(key[i + 1:] in unstored for i in dots):
            incompatible.missing_keys.remove(key)


__all__ = ["CausalLMHead", "CausalLMOptions", "Piece"]
