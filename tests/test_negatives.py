"""Hard negative captions: one word changed, copied from the most similar caption of the batch, or two
words of one caption exchanged (binding negatives)."""

from __future__ import annotations

import torch

from m2gan.negatives import (
    WordPairs,
    binding_twins,
    hard_negatives,
    substitute_one_word,
    swap_bound_words,
    swap_one_word,
)

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
WORDS = {w: i + 4 for i, w in enumerate(["a", "red", "blue", "circle", "square", "left", "of", "the", "top", "corner", "in", "small", "big", "round", "shape"])}


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


def test_word_pairs_from_the_corpus_find_exchanges_the_batch_alone_cannot():
    batch = encode("a red circle left of a blue square")  # alone, it never shows "a blue" before "circle"
    swapped, found = swap_bound_words(batch, 4, torch.Generator().manual_seed(0))
    assert not found.any()
    corpus = encode("a blue circle", "a red square", "a red circle left of a blue square")
    pairs = WordPairs.of(corpus, vocab_size=len(WORDS) + 4)
    swapped, found = swap_bound_words(batch, 4, torch.Generator().manual_seed(0), pairs)
    assert found.all() and swapped[0].tolist() == encode("a blue circle left of a red square")[0].tolist()


def test_a_substitute_word_comes_from_the_corpus_between_the_same_neighbours():
    """The batch holds no square, the corpus does: "a red circle" can only become "a red square"
    ("blue" was never seen before "circle"; "a" has no other word seen between [BOS] and "red")."""
    corpus = encode("a red circle", "a blue square", "a red square")
    pairs = WordPairs.of(corpus, vocab_size=len(WORDS) + 4)
    batch = encode("a red circle")
    for seed in range(10):
        substituted, found = substitute_one_word(batch, 4, pairs, torch.Generator().manual_seed(seed))
        assert found.all() and substituted[0].tolist() == encode("a red square")[0].tolist()


def test_a_substitute_changes_one_word_to_one_seen_in_its_place_and_specials_stay():
    corpus = encode("a red circle left of a blue square", "a small blue circle", "a big red square",
                    "the red circle in the top corner", "a red round shape")  # fmt: skip
    pairs = WordPairs.of(corpus, vocab_size=len(WORDS) + 4)
    batch = encode("a red circle left of a blue square", "a small blue circle", "the red circle in the top corner")
    seen = set()
    for seed in range(30):
        substituted, found = substitute_one_word(batch, 4, pairs, torch.Generator().manual_seed(seed), tries=8)
        assert found.all()
        changed = (substituted != batch).nonzero().tolist()
        assert sorted(row for row, _ in changed) == [0, 1, 2]  # one word in each row
        for row, p in changed:
            word = int(substituted[row, p])
            assert word >= 4 and batch[row, p] >= 4  # special tokens never move or enter
            assert pairs.contains(batch[row, p - 1], torch.tensor(word)) and pairs.contains(torch.tensor(word), batch[row, p + 1])
            seen.add((row, p, word))
    assert len(seen) > 3  # the choice of position and word is random


def test_a_caption_without_substitutes_keeps_the_batch_swap():
    corpus = encode("a red circle", "a blue square")
    pairs = WordPairs.of(corpus, vocab_size=len(WORDS) + 4)
    batch = encode("the top corner", "the top shape")  # no word of these was seen between these neighbours
    substituted, found = substitute_one_word(batch, 4, pairs, torch.Generator().manual_seed(0))
    assert not found.any() and torch.equal(substituted, batch)
    plain = swap_one_word(batch, 4, torch.Generator().manual_seed(0))
    assert torch.equal(hard_negatives(batch, 4, 0.0, torch.Generator().manual_seed(0), pairs, from_corpus=True), plain)


def test_word_pairs_round_trip_through_one_tensor():
    pairs = WordPairs.of(encode("a red circle left of a blue square", "in the top corner"), vocab_size=40)
    back = WordPairs.from_tensor(pairs.to_tensor())
    assert back.vocab_size == 40 and torch.equal(back.codes, pairs.codes)
    assert bool(back.contains(torch.tensor(WORDS["a"]), torch.tensor(WORDS["red"])))
    assert not bool(back.contains(torch.tensor(WORDS["red"]), torch.tensor(WORDS["a"])))


TWIN_CORPUS = encode(
    "a small red circle left of a big blue square",
    "a big blue circle left of a small red square",
    "a small red square left of a big blue circle",
    "a big red circle", "a small blue square", "a red round shape", "a blue round shape left of a red circle",
)  # fmt: skip


def twins_of(caption: str) -> dict[str, str | None]:
    pairs = WordPairs.of(TWIN_CORPUS, vocab_size=len(WORDS) + 4)
    names = {i: w for w, i in WORDS.items()}
    out = {}
    for kind, (twins, found) in binding_twins(encode(caption), 4, pairs).items():
        out[kind] = " ".join(names[i] for i in twins[0].tolist() if i >= 4) if found[0] else None
    return out


def test_binding_twins_exchange_a_modifier_the_head_words_or_the_objects():
    assert twins_of("a small red circle left of a big blue square") == {
        "attribute": "a small blue circle left of a big red square",  # the modifier next to the head
        "noun": "a small red square left of a big blue circle",
        "relation": "a big blue square left of a small red circle",  # = the relation flipped
    }


def test_equal_head_words_give_no_noun_twin_and_still_bound_phrases():
    assert twins_of("a small red circle left of a big blue circle") == {
        "attribute": "a small blue circle left of a big red circle",
        "noun": None,  # exchanging a word with itself changes nothing
        "relation": "a big blue circle left of a small red circle",
    }


def test_captions_without_two_whole_parallel_phrases_have_no_twins():
    # one object; and a two-word head ("round shape") against a one-word one: the phrases do not align
    for caption in ("a small red circle", "a small red round shape left of a big blue circle"):
        assert twins_of(caption) == {"attribute": None, "noun": None, "relation": None}, caption
