"""Text outputs: the output tokenizer, greedy and beam search, the text head and its metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse.config import load_config
from mmfuse.data.table import Table
from mmfuse.errors import ConfigError
from mmfuse.heads.decoding import beam_search, greedy, length_penalty
from mmfuse.heads.text import TextHead, TextHeadOptions
from mmfuse.outputs.text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    TextTargetPreprocessor,
    decode_ids,
    join_tokens,
    normalize,
    split_tokens,
    text_metrics,
    text_scorer,
)
from mmfuse.specs import InputDims, TargetSpec
from mmfuse.training.metrics import evaluate_outputs


def text_config(**output) -> dict:
    return {"inputs": [{"name": "prompt", "type": "text"}],
            "outputs": [{"name": "caption", "type": "text", **output}]}


# --- the output tokenizer


@pytest.mark.parametrize(("text", "tokens"), [
    ("312", ["3", "1", "2"]),
    ("三百一十二", ["三", "百", "一", "十", "二"]),
    ("trois cent douze", ["trois", "▁cent", "▁douze"]),
    ("quatre-vingt-dix", ["quatre", "-", "vingt", "-", "dix"]),
    ("vingt et un", ["vingt", "▁et", "▁un"]),
    ("  the red circle moves left,  then up ", ["the", "▁red", "▁circle", "▁moves", "▁left",
                                               ",", "▁then", "▁up"]),
    ("zéro", ["zéro"]),
])
def test_word_tokens_split_digits_cjk_and_punctuation(text, tokens):
    assert split_tokens(text) == tokens
    assert join_tokens(tokens) == normalize(text)


def test_char_tokens():
    assert split_tokens("a b1", "char") == ["a", "▁b", "1"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["word", "char"]))
def test_tokens_join_back_to_the_normalised_text(text, kind):
    assert join_tokens(split_tokens(text, kind)) == normalize(text)


def fitted(texts: list[str], **preprocess) -> TextTargetPreprocessor:
    config = load_config(text_config(preprocess=preprocess, head={"max_length": 4}))
    prep = TextTargetPreprocessor(config.outputs[0])
    prep.fit(Table([{"caption": t} for t in texts], ".", "train", restrict=False))
    return prep


def test_vocabulary_is_learned_from_training_targets_and_ids_wrap_each_target():
    prep = fitted(["a red circle", "a red square", "a blue circle"])
    assert prep.labels[:4] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    assert prep.labels[4:] == ["a", "▁circle", "▁red", "▁blue", "▁square"]  # by frequency
    ids = prep.encode(Table([{"caption": "a red triangle"}, {"caption": None}], ".", "t",
                            restrict=False)).index
    lookup = {t: i for i, t in enumerate(prep.labels)}
    assert ids[0].tolist() == [BOS_ID, lookup["a"], lookup["▁red"], UNK_ID, EOS_ID]
    assert ids[1].tolist() == [PAD_ID] * 5  # no target: left out of the loss
    assert decode_ids(prep.labels, ids[0, 1:].tolist()) == "a red [UNK]"


def test_long_targets_are_cut_at_max_length_and_counted():
    prep = fitted(["one two three four five six", "one"])
    assert prep.truncated == 1
    ids = prep.encode(Table([{"caption": "one two three four five six"}], ".", "t",
                            restrict=False)).index
    assert ids.shape == (1, 6) and ids[0, -1] == EOS_ID  # [BOS] + 4 tokens + [EOS]


def test_min_frequency_and_lowercase():
    prep = fitted(["Red RED", "red", "BLUE"], lowercase=True, min_frequency=2)
    assert prep.labels[4:] == ["red"]
    assert prep.normalize(" Red  RED ") == "red red"


def test_target_tensor_cuts_all_padding_columns():
    prep = fitted(["a b c", "a"])
    ids = prep.encode(Table([{"caption": "a"}, {"caption": "a b c"}], ".", "t",
                            restrict=False)).index
    assert prep.target_tensor(ids[:1]).shape == (1, 3)
    assert prep.target_tensor(ids).shape == (2, 5)


# --- config


@pytest.mark.parametrize(("output", "message"), [
    ({"decoder": "lstm"}, "decoder"),
    ({"decoder": "gru", "head": {"decoder": "transformer"}}, "disagree"),
    ({"head": {"decoding": "beam", "beam_width": 2, "hypotheses": 3}}, "hypotheses=3"),
    ({"head": {"decoder": "transformer", "dim": 30, "heads": 4}}, "must divide"),
    ({"preprocess": {"tokenizer": "bpe"}}, "preprocess"),
    ({"head": {"beam": 3}}, "unknown key"),
])
def test_bad_text_output_configs_name_the_key(output, message):
    with pytest.raises(ConfigError, match=message):
        load_config(text_config(**output))


def test_category_outputs_take_no_decoder_or_tokenizer():
    with pytest.raises(ConfigError, match="decoder does not apply to category outputs"):
        load_config({"inputs": [{"name": "q", "type": "text"}],
                     "outputs": [{"name": "a", "type": "category", "decoder": "gru"}]})
    with pytest.raises(ConfigError, match="preprocess does not apply to category outputs"):
        load_config({"inputs": [{"name": "q", "type": "text"}],
                     "outputs": [{"name": "a", "type": "category",
                                  "preprocess": {"tokenizer": "char"}}]})


def test_decoder_shorthand_is_recorded_in_the_head():
    config = load_config(text_config(decoder="transformer"))
    assert config.outputs[0].head["decoder"] == "transformer"
    assert config.outputs[0].decoder == "transformer"
    assert load_config(config.model_dump(mode="json")) == config  # a bundle's config reloads


# --- search


A, B = 4, 5  # token ids after the four special ones


class ChainDecoder:
    """A fixed language model where greedy search is wrong: "a" is likelier first, but every
    text after "a" is unlikely, while "b [EOS]" has probability 0.36."""

    def start(self, memory, mask):
        return torch.zeros(memory.shape[0], 0, dtype=torch.long)

    def step(self, prefix, last, memory, mask):
        prefix = torch.cat([prefix, last.unsqueeze(1)], dim=1)
        probs = torch.full((len(last), 6), 1e-9)
        for row, ids in enumerate(prefix.tolist()):
            if ids == [BOS_ID]:
                probs[row, A], probs[row, B] = 0.6, 0.4
            elif ids[-1] == B:
                probs[row, EOS_ID], probs[row, A], probs[row, B] = 0.9, 0.05, 0.05
            else:
                probs[row, A], probs[row, B], probs[row, EOS_ID] = 0.36, 0.34, 0.3
        return (probs / probs.sum(1, keepdim=True)).log(), prefix

    @staticmethod
    def reorder(prefix, index):
        return prefix[index]


MEMORY, MASK = torch.zeros(2, 1, 8), torch.ones(2, 1, dtype=torch.bool)


def test_greedy_follows_the_locally_best_token_to_max_length():
    tokens, scores = greedy(ChainDecoder(), MEMORY, MASK, max_length=4)
    assert tokens.shape == (2, 1, 5)
    assert tokens[0, 0].tolist() == [A, A, A, A, EOS_ID]  # forced to end at max_length
    assert scores[0, 0].item() == pytest.approx(math.log(0.6 * 0.36**3 * 0.3), rel=1e-4)


def test_beam_search_finds_the_likelier_text_and_ranks_hypotheses():
    tokens, scores = beam_search(ChainDecoder(), MEMORY, MASK, max_length=6, width=2,
                                 alpha=0.0, keep=2)
    assert tokens[0, 0, :2].tolist() == [B, EOS_ID]
    assert tokens[0, 1, :3].tolist() == [A, B, EOS_ID]
    assert scores[0].tolist() == pytest.approx([math.log(0.36), math.log(0.6 * 0.34 * 0.9)],
                                               rel=1e-4)
    assert torch.equal(tokens[0], tokens[1])  # rows are searched independently


def test_length_penalty_favours_the_longer_hypothesis():
    tokens, scores = beam_search(ChainDecoder(), MEMORY, MASK, max_length=6, width=2,
                                 alpha=5.0, keep=2)
    assert tokens[0, 0, :3].tolist() == [A, B, EOS_ID]
    assert scores[0, 0].item() == pytest.approx(
        math.log(0.6 * 0.34 * 0.9) / length_penalty(3, 5.0), rel=1e-4)


def test_beam_of_width_one_is_greedy():
    beam, _ = beam_search(ChainDecoder(), MEMORY, MASK, max_length=4, width=1, alpha=0.0,
                          keep=1)
    assert torch.equal(beam, greedy(ChainDecoder(), MEMORY, MASK, max_length=4)[0])


# --- the head


@pytest.mark.parametrize("decoder", ["gru", "transformer"])
def test_head_teacher_forcing_and_generation_shapes(decoder):
    torch.manual_seed(0)
    options = TextHeadOptions(decoder=decoder, dim=16, heads=2, max_length=5,
                              decoding="beam", beam_width=3, hypotheses=2)
    vocab = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "x", "▁y"]
    head = TextHead(options, 12, TargetSpec(labels=vocab), {}).eval()
    fused = torch.randn(3, 12)
    target = torch.tensor([[BOS_ID, 4, 5, EOS_ID], [BOS_ID, 4, EOS_ID, PAD_ID],
                           [PAD_ID] * 4])
    logits = head(fused, {}, target)
    assert logits.shape == (3, 3, 6)
    loss = TextHead.loss(logits, target)
    gold = target[:, 1:].reshape(-1)
    real = gold != PAD_ID
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 6)[real], gold[real])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)  # padding left out
    generated = head(fused, {})
    assert generated["tokens"].shape == (3, 2, 6) and generated["scores"].shape == (3, 2)
    rows = head.postprocess(generated)
    assert len(rows) == 3 and len(rows[0]["hypotheses"]) == 2
    assert rows[0]["prediction"] == rows[0]["hypotheses"][0]["text"]
    assert rows[0]["hypotheses"][0]["score"] >= rows[0]["hypotheses"][1]["score"]


def test_gru_decoder_steps_match_teacher_forcing():
    """Generation and training compute the same next-token distribution."""
    torch.manual_seed(0)
    for decoder in ("gru", "transformer"):
        head = TextHead(TextHeadOptions(decoder=decoder, dim=16, heads=2), 8,
                        TargetSpec(labels=["[PAD]", "[UNK]", "[BOS]", "[EOS]", "x", "y"]),
                        {}).eval()
        fused = torch.randn(2, 8)
        target = torch.tensor([[BOS_ID, 4, 5, 4, EOS_ID]] * 2)
        memory, mask = head.memory(fused, {})
        teacher = head.decoder(target[:, :-1], memory, mask).log_softmax(-1)
        state = head.decoder.start(memory, mask)
        for t in range(4):
            step, state = head.decoder.step(state, target[:, t], memory, mask)
            assert torch.allclose(step, teacher[:, t], atol=1e-5), (decoder, t)


def test_padded_memory_slots_do_not_change_the_text():
    torch.manual_seed(0)
    dims = {"prompt": InputDims(token_dim=6, pooled_dim=6)}
    head = TextHead(TextHeadOptions(dim=16), 8,
                    TargetSpec(labels=["[PAD]", "[UNK]", "[BOS]", "[EOS]", "x"]), dims).eval()
    from mmfuse.features import Features

    tokens = torch.randn(1, 3, 6)
    short = Features(tokens[:, :2], torch.ones(1, 2, dtype=torch.bool), torch.randn(1, 6),
                     torch.ones(1, dtype=torch.bool))
    padded = Features(torch.cat([short.tokens, 9 * torch.ones(1, 1, 6)], 1),
                      torch.tensor([[True, True, False]]), short.pooled, short.present)
    fused = torch.randn(1, 8)
    target = torch.tensor([[BOS_ID, 4, EOS_ID]])
    assert torch.allclose(head(fused, {"prompt": short}, target),
                          head(fused, {"prompt": padded}, target), atol=1e-5)


# --- metrics


def test_text_metrics_known_numbers():
    stats = {"tokens": np.array([3, 2, 4]), "correct": np.array([3, 1, 2]),
             "loss": np.array([0.3, 1.0, 2.0])}
    metrics = text_metrics(["a red circle", "3 1 2", "x"], ["a red circle", "3 1 5", None],
                           stats)
    assert metrics["exact_match"] == 0.5  # the row without a reference is left out
    assert metrics["token_accuracy"] == pytest.approx(4 / 5)
    assert metrics["loss"] == pytest.approx(1.3 / 5)
    assert 0 < metrics["bleu"] < 100 and 0 < metrics["chrf"] < 100
    perfect = text_metrics(["三百一十二"], ["三百一十二"], {k: v[:1] for k, v in stats.items()})
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["exact_match"] == 1.0


def test_text_metrics_per_group():
    stats = {"tokens": np.ones(4, int), "correct": np.array([1, 0, 1, 1]),
             "loss": np.zeros(4)}
    scorer = text_scorer(["a", "b", "c", "d"], ["a", "x", "c", "d"], stats)
    result = evaluate_outputs({"caption": scorer}, 4, groups=["p", "q", "p", "q"])
    assert result["outputs"]["caption"]["exact_match"] == 0.75
    assert result["groups"]["p"]["outputs"]["caption"]["exact_match"] == 1.0
    assert result["groups"]["q"]["outputs"]["caption"]["token_accuracy"] == 0.5
