"""Hard negative captions: one word changed, copied from the most similar caption of the batch."""

from __future__ import annotations

import torch

from m2gan.negatives import swap_one_word

BOS, EOS = 2, 3


def test_exactly_one_word_changes_and_specials_stay():
    tokens = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 8, 9, 3, 0, 0], [2, 10, 11, 12, 13, 3]])
    for seed in range(20):
        swapped = swap_one_word(tokens, num_special=4, generator=torch.Generator().manual_seed(seed))
        differs = swapped != tokens
        assert (differs.sum(dim=1) == 1).all()
        assert (swapped[tokens < 4] == tokens[tokens < 4]).all()  # padding, [BOS], [EOS] untouched
        assert set(swapped[differs].tolist()) <= set(tokens[tokens >= 4].tolist())


def test_the_word_comes_from_the_most_similar_caption_at_the_same_position():
    # "a small red circle", "a small blue circle", "there is one big square"
    tokens = torch.tensor([[BOS, 4, 5, 6, 7, EOS], [BOS, 4, 5, 8, 7, EOS], [BOS, 9, 10, 11, 12, 13]])
    swapped = swap_one_word(tokens, num_special=4, generator=torch.Generator().manual_seed(0))
    # rows 0 and 1 share three words: each takes the other's colour, a grammatical hard negative
    assert swapped[0].tolist() == [BOS, 4, 5, 8, 7, EOS]
    assert swapped[1].tolist() == [BOS, 4, 5, 6, 7, EOS]


def test_a_row_that_cannot_borrow_is_left_alone():
    tokens = torch.tensor([[2, 3, 0], [2, 5, 3]])
    swapped = swap_one_word(tokens, num_special=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(swapped[0], tokens[0])
