"""Hard negative captions: one word changed, copied from the most similar caption of the batch, or two
words of one caption exchanged (binding negatives)."""

from __future__ import annotations

import torch

from m2gan.negatives import hard_negatives, swap_bound_words, swap_one_word

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


# Word ids of the binding tests: sentences of ids >= 4 with [BOS]/[EOS] around them.
WORDS = {w: i + 4 for i, w in enumerate("a red blue circle square left of the top corner in".split())}


def encode(*captions: str) -> torch.Tensor:
    rows = [[BOS, *(WORDS[w] for w in c.split()), EOS] for c in captions]
    length = max(map(len, rows))
    return torch.tensor([row + [0] * (length - len(row)) for row in rows])


def test_a_binding_negative_exchanges_the_parallel_words_of_two_phrases():
    tokens = encode("a red circle left of a blue square", "a blue circle", "a red square")
    for seed in range(10):
        swapped, found = swap_bound_words(tokens, num_special=4, generator=torch.Generator().manual_seed(seed))
        # the colours trade places: "a blue", "blue circle", "a red", "red square" are all in the batch;
        # the nouns may not, as the batch never shows "square left"
        assert swapped[0].tolist() == encode("a blue circle left of a red square")[0].tolist()
        assert found.tolist() == [True, False, False]  # a caption of one phrase has nothing to exchange
        assert torch.equal(swapped[1:], tokens[1:])
    tokens = encode("a red circle left of a blue square", "a blue circle", "a red square", "a square left")
    outcomes = {
        tuple(swap_bound_words(tokens, 4, torch.Generator().manual_seed(seed))[0][0].tolist()) for seed in range(20)
    }
    expected = {"a blue circle left of a red square", "a red square left of a blue circle"}
    assert outcomes == {tuple(encode(c)[0].tolist()) for c in expected}  # now the nouns may trade too


def test_a_binding_negative_needs_the_batch_to_show_both_words_in_each_others_place():
    # "top" before "corner" and "left" after "the" are seen, but never "top" after "left": refused
    tokens = encode("in the top left corner", "in the left corner", "the top corner")
    swapped, found = swap_bound_words(tokens, num_special=4, generator=torch.Generator().manual_seed(0))
    assert not found.any() and torch.equal(swapped, tokens)


def test_neighbouring_words_and_special_tokens_never_move():
    # every word pair of "a blue red circle" is seen, yet neighbours are not exchanged
    tokens = encode("a red blue circle", "a blue circle", "blue blue red red circle")
    swapped, found = swap_bound_words(tokens, num_special=4)
    assert not found[0] and torch.equal(swapped[0], tokens[0])


def test_hard_negatives_without_binding_are_one_word_swaps_with_the_same_draws():
    tokens = encode("a red circle left of a blue square", "a blue circle", "a red square", "a blue square")
    plain = swap_one_word(tokens, 4, torch.Generator().manual_seed(3))
    assert torch.equal(hard_negatives(tokens, 4, 0.0, torch.Generator().manual_seed(3)), plain)
    mixed = hard_negatives(tokens, 4, 1.0, torch.Generator().manual_seed(3))
    # share 1: the row with a possible exchange gets it (same words, other order), the others a one-word swap
    assert sorted(mixed[0].tolist()) == sorted(tokens[0].tolist()) and not torch.equal(mixed[0], tokens[0])
    assert torch.equal(mixed[1:], plain[1:])
