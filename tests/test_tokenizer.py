"""Caption tokenizer: round trip, unknown words, truncation, serialisation."""

from __future__ import annotations

import warnings

import pytest
import torch

from m2gan.tokenizer import CaptionTokenizer


@pytest.fixture
def tokenizer() -> CaptionTokenizer:
    return CaptionTokenizer.fit(["a red circle on the left", "a blue square , at the top"], max_length=8)


def test_round_trip(tokenizer):
    tokens = tokenizer.encode(["A red square at the top"])
    assert tokens.shape == (1, 8) and tokens.dtype == torch.long
    assert tokens[0, 0] == tokenizer.bos_id
    assert tokenizer.decode(tokens[0]) == "a red square at the top"


def test_unknown_words_become_unk(tokenizer):
    tokens = tokenizer.encode(["a purple circle"])[0]
    assert tokens[2] == tokenizer.unk_id
    assert tokenizer.unknown_words("a purple circle") == ["purple"]
    assert tokenizer.decode(tokens) == "a [UNK] circle"


def test_long_captions_are_truncated_with_one_warning(tokenizer):
    long = "a red circle on the left a blue square at the top"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens = tokenizer.encode([long, long])
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1
    assert tokens.shape == (2, 8)
    assert tokens[0, -1] == tokenizer.eos_id
    assert tokenizer.decode(tokens[0]) == "a red circle on the left"


def test_json_round_trip_keeps_vocabulary(tokenizer):
    restored = CaptionTokenizer.from_json(tokenizer.to_json())
    assert restored == tokenizer and restored.max_length == 8
    assert torch.equal(restored.encode(["a blue circle"]), tokenizer.encode(["a blue circle"]))


def test_a_single_string_is_refused(tokenizer):
    with pytest.raises(TypeError):
        tokenizer.encode("a red circle")
