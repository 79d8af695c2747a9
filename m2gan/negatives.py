"""Mismatched captions for the matching-aware losses.

Another sample's caption is an easy negative: it differs from the true caption in many words, so
the discriminator can reject it by checking the most visible attribute alone. A hard negative
differs in one detail. Without knowing what the words mean, one is made by a minimal edit towards
the batch's most similar caption: copy into the caption one word that the two captions hold at the
same position and that differs. Captions of the same template then trade a word of the same role
("a small *red* circle" -> "a small *blue* circle"), so every word must be checked against the
image. Synonyms swapped this way are false negatives; they are rare enough to be harmless.

A *binding* negative keeps every word and changes only which word goes with which: two words of
the same caption trade places ("a *red* circle left of a *blue* square" -> "a *blue* circle left
of a *red* square"). A discriminator that checks each word against the image on its own cannot
reject it; one that checks where each word acts can. Again without knowing what words mean, two
words may trade places when each is already seen in the other's place: the batch holds the word
pairs (left neighbour, word) and (word, right neighbour) that the swap would create. That rule
finds colours, sizes and nouns of parallel phrases, and refuses most reorderings that only break
the grammar ("the *top* *left* corner"). Parallel phrases joined by a symmetric relation ("a man
and a dog") give false negatives, so binding negatives are opt-in.
"""

from __future__ import annotations

import torch


def swap_one_word(tokens: torch.Tensor, num_special: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Make each caption differ in one word, copied from the most similar other caption of the batch.

    Args:
        tokens: (B, L) token ids; ids below ``num_special`` (padding, [BOS], [EOS], [UNK]) are
            never changed or copied.
        num_special: Number of special token ids, which occupy ids ``0 … num_special - 1``.
        generator: Random generator for tie-breaking, for reproducible negatives.

    Returns:
        (B, L) token ids; each row differs from its input in exactly one word, except a row that
        shares no word position with any other caption of the batch, which is left unchanged.
    """
    batch, length = tokens.shape
    is_word = tokens >= num_special  # (B, L)
    both_words = is_word[:, None, :] & is_word[None, :, :]  # (B, B, L)
    equal = tokens[:, None, :] == tokens[None, :, :]
    differs = both_words & ~equal  # positions where row j could lend row i a word
    agreement = (both_words & equal).sum(-1).float()  # (B, B) shared words at the same positions

    noise = torch.rand((batch, batch), generator=generator).to(tokens.device)
    similarity = agreement + 0.5 * noise  # random tie-break among equally similar captions
    eligible = differs.any(-1) & ~torch.eye(batch, dtype=torch.bool, device=tokens.device)
    similarity = similarity.masked_fill(~eligible, float("-inf"))
    donor = similarity.argmax(dim=1)  # (B,)
    rows = torch.arange(batch, device=tokens.device)

    candidates = differs[rows, donor]  # (B, L)
    scores = torch.rand((batch, length), generator=generator).to(tokens.device)
    position = scores.masked_fill(~candidates, -1.0).argmax(dim=1)  # a random differing position

    swapped = tokens.clone()
    can_swap = eligible.any(dim=1)
    swapped[rows[can_swap], position[can_swap]] = tokens[donor, position][can_swap]
    return swapped


def swap_bound_words(
    tokens: torch.Tensor, num_special: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchange two words within each caption where the batch shows each can stand in the other's place.

    Words at positions ``p < q - 1`` of one caption may trade places when the batch holds, anywhere,
    the word pairs the swap creates: (word before p, word q), (word q, word after p), (word before
    q, word p) and (word p, word after q). Neighbouring words are never exchanged.

    Args:
        tokens: (B, L) token ids; ids below ``num_special`` are never moved (they may be neighbours).
        num_special: Number of special token ids, which occupy ids ``0 … num_special - 1``.
        generator: Random generator choosing among a caption's possible exchanges.

    Returns:
        swapped: (B, L) token ids, each row with one exchange where ``found`` (else unchanged).
        found: (B,) bool, whether the row had a possible exchange.
    """
    batch, length = tokens.shape
    device = tokens.device
    vocab = int(tokens.max()) + 1
    seen = torch.unique(tokens[:, :-1] * vocab + tokens[:, 1:])  # every adjacent pair of the batch

    def pair_seen(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return torch.isin(left * vocab + right, seen)

    # The two neighbours of every position; the sequence ends count as padding (never a real pair).
    edge = torch.zeros((batch, 1), dtype=tokens.dtype, device=device)
    before = torch.cat([edge, tokens[:, :-1]], dim=1)  # (B, L)
    after = torch.cat([tokens[:, 1:], edge], dim=1)
    p_word, q_word = tokens[:, :, None], tokens[:, None, :]  # (B, L, 1), (B, 1, L): word at p, at q
    fits_p = pair_seen(before[:, :, None], q_word) & pair_seen(q_word, after[:, :, None])  # q's word at p
    fits_q = pair_seen(before[:, None, :], p_word) & pair_seen(p_word, after[:, None, :])  # p's word at q
    is_word = tokens >= num_special
    position = torch.arange(length, device=device)
    apart = position[None, :] > position[:, None] + 1  # (L, L): p < q - 1
    possible = fits_p & fits_q & (p_word != q_word) & is_word[:, :, None] & is_word[:, None, :] & apart  # (B, L, L)

    scores = torch.rand((batch, length * length), generator=generator).to(device)
    choice = scores.masked_fill(~possible.flatten(1), -1.0).argmax(dim=1)  # (B,) a random possible pair
    p, q = choice // length, choice % length
    found = possible.flatten(1).any(dim=1)
    rows = torch.arange(batch, device=device)[found]
    swapped = tokens.clone()
    swapped[rows, p[found]] = tokens[rows, q[found]]
    swapped[rows, q[found]] = tokens[rows, p[found]]
    return swapped, found


def hard_negatives(
    tokens: torch.Tensor, num_special: int, binding_share: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One hard negative per caption: a binding swap for a ``binding_share`` of the captions that
    have one (:func:`swap_bound_words`), a one-word swap for the rest (:func:`swap_one_word`).

    With ``binding_share`` 0 this is :func:`swap_one_word` and draws no further random numbers.
    """
    swapped = swap_one_word(tokens, num_special, generator)
    if binding_share <= 0:
        return swapped
    bound, found = swap_bound_words(tokens, num_special, generator)
    chosen = found & (torch.rand(tokens.shape[0], generator=generator).to(tokens.device) < binding_share)
    return torch.where(chosen[:, None], bound, swapped)
