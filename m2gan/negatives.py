"""Mismatched captions for the matching-aware losses.

Another sample's caption is an easy negative: it differs from the true caption in many words, so
the discriminator can reject it by checking the most visible attribute alone. A hard negative
differs in one detail. Without knowing what the words mean, one is made by a minimal edit towards
the batch's most similar caption: copy into the caption one word that the two captions hold at the
same position and that differs. Captions of the same template then trade a word of the same role
("a small *red* circle" -> "a small *blue* circle"), so every word must be checked against the
image. Synonyms swapped this way are false negatives; they are rare enough to be harmless.
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
