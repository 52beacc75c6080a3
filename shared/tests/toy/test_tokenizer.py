"""The toy tokenizer (toyworld.md §7)."""

from __future__ import annotations

import warnings

import pytest
import torch

from flowcore.toy.constants import BOS_ID, EOS_ID, PAD_ID, UNK_ID, VOCAB
from flowcore.toy.tokenizer import ToyTokenizer, ToyVocabularyError


def test_call_encodes_and_pads():
    tok = ToyTokenizer()
    out = tok(["a red circle", ""], padding="max_length", return_tensors="pt")
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 32) and ids.dtype == torch.int64
    red, circle = VOCAB.index("red"), VOCAB.index("circle")
    assert ids[0, :5].tolist() == [BOS_ID, VOCAB.index("a"), red, circle, EOS_ID]
    assert ids[0, 5:].eq(PAD_ID).all() and mask[0].tolist() == [1] * 5 + [0] * 27
    assert ids[1, :2].tolist() == [BOS_ID, EOS_ID] and mask[1].sum() == 2  # "" is valid
    assert out.input_ids is ids
    assert tok.decode(ids[0]) == "a red circle"
    assert tok("a red circle", padding="longest", return_tensors="np")["input_ids"].shape == (1, 5)


def test_normalisation_and_aliases():
    tok = ToyTokenizer()
    a = tok("A RED circle, in the Centre!")["input_ids"]
    b = tok("a red circle in the center")["input_ids"]
    assert torch.equal(a, b)
    assert tok.decode(tok("a red tshirt")["input_ids"][0]) == "a red t-shirt"


def test_strict_error_names_the_word_and_lists_the_vocabulary():
    tok = ToyTokenizer()
    with pytest.raises(ToyVocabularyError) as info:
        tok(["a red cat", "a red circle"])
    message = str(info.value)
    assert "'cat'" in message
    for word in ("circle", "mannequin", "t-shirt", "bottom", "remove"):
        assert word in message


def test_too_long_raises():
    tok = ToyTokenizer()
    with pytest.raises(ToyVocabularyError, match="max_length"):
        tok(" ".join(["red"] * 31))
    assert tok(" ".join(["red"] * 30))["attention_mask"].sum() == 32


def test_non_strict_warns_once_per_word_and_uses_unk():
    tok = ToyTokenizer(strict=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = tok(["a red cat", "a blue cat", "a dog"])["input_ids"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and any("'cat'" in m for m in messages) and any("'dog'" in m for m in messages)
    assert ids[0, 3] == UNK_ID and ids[2, 2] == UNK_ID
    assert tok.decode(ids[0]) == "a red [UNK]"


def test_save_load_round_trip(tmp_path):
    tok = ToyTokenizer(strict=False)
    path = tok.save_pretrained(tmp_path / "tokenizer")
    assert path.name == "tokenizer_config.json"
    loaded = ToyTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert loaded.max_length == 32 and loaded.strict is False and loaded.get_vocab() == tok.get_vocab()
    texts = ["a large red circle in the top left and a small blue square on a green background", ""]
    assert torch.equal(loaded(texts)["input_ids"], tok(texts)["input_ids"])
    assert ToyTokenizer.from_pretrained(tmp_path, subfolder="tokenizer").strict is False
    with pytest.raises(FileNotFoundError):
        ToyTokenizer.from_pretrained(tmp_path / "missing")


def test_vocabulary_shape():
    tok = ToyTokenizer()
    assert len(tok) == tok.vocab_size == 64 and len(VOCAB) == 56
    assert tok.get_vocab()["[PAD]"] == 0 and tok.get_vocab()["[EOS]"] == EOS_ID
    with pytest.raises(ToyVocabularyError):
        tok.decode([60])
