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
words may trade places when each is already seen in the other's place: the captions hold the
word pairs (left neighbour, word) and (word, right neighbour) that the swap would create. That rule
finds colours, sizes and nouns of parallel phrases, and refuses most reorderings that only break
the grammar ("the *top* *left* corner"). The pairs come from all the captions the vocabulary was
fitted on (:class:`WordPairs`, computed once by the data module and saved in checkpoints): a batch
of 16 rarely holds every pair a swap needs, the corpus nearly always does. Parallel phrases joined
by a symmetric relation ("a man and a dog") give false negatives.

The same rule makes the *binding twins* that measure whether a discriminator binds
(:func:`binding_twins`): one caption changed only in which word goes with which object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TWIN_KINDS = ("attribute", "noun", "relation")
"""Binding twins (:func:`binding_twins`): a modifier of each object exchanged, the objects' head
words exchanged, and the two objects' phrases exchanged (the relation between them flipped)."""


@dataclass(frozen=True)
class WordPairs:
    """The adjacent word pairs (left, right) of a corpus of token rows: where each word was seen.

    Attributes:
        codes: (N,) long, sorted and unique: ``left * vocab_size + right`` of every adjacent pair
            (special tokens included, so "first word" and "last word" count as places too).
        vocab_size: Size of the vocabulary the ids come from.
    """

    codes: torch.Tensor
    vocab_size: int

    @classmethod
    def of(cls, tokens: torch.Tensor, vocab_size: int) -> WordPairs:
        """The pairs of token rows ``tokens`` (N, L) with ids below ``vocab_size``."""
        return cls(torch.unique(tokens[:, :-1] * vocab_size + tokens[:, 1:]).cpu(), vocab_size)

    def contains(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Whether each (left, right) pair, elementwise over two broadcastable id tensors, was seen."""
        return torch.isin(left * self.vocab_size + right, self.codes.to(left.device))

    def to_tensor(self) -> torch.Tensor:
        """One long tensor, for checkpoints: the vocabulary size, then the codes."""
        return torch.cat([torch.tensor([self.vocab_size]), self.codes.cpu()])

    @classmethod
    def from_tensor(cls, saved: torch.Tensor) -> WordPairs:
        """Inverse of :meth:`to_tensor`."""
        return cls(saved[1:].clone(), int(saved[0]))

    def to(self, device: torch.device | str) -> WordPairs:
        """The same pairs with the codes on ``device`` (where the token ids they are checked against live)."""
        return WordPairs(self.codes.to(device), self.vocab_size)


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


def substitute_one_word(
    tokens: torch.Tensor,
    num_special: int,
    pairs: WordPairs,
    generator: torch.Generator | None = None,
    tries: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace one word of each caption by another word seen between the same two neighbours.

    The new word comes from the corpus (``pairs``), not from the batch: "a red *circle* on the
    left" may become "a red *square* on the left" though no caption of the batch has a red square
    on the left, where :func:`swap_one_word` needs a batch caption of the same template that
    differs in that very word. Synonyms ("circle" -> "disc") are false negatives, as with any
    edit made without knowing what words mean.

    Args:
        tokens: (B, L) token ids; ids below ``num_special`` are never replaced or inserted.
        num_special: Number of special token ids, which occupy ids ``0 … num_special - 1``.
        pairs: Where words were seen; its vocabulary bounds the candidates (cost O(B · tries · V)).
        generator: Random generator choosing the positions and the new words.
        tries: Word positions looked at per caption (at random); the first with a candidate is used.

    Returns:
        substituted: (B, L) token ids, one word replaced where ``found`` (else unchanged).
        found: (B,) bool, whether a looked-at position had a candidate.
    """
    batch, length = tokens.shape
    device = tokens.device
    is_word = tokens >= num_special
    # ``tries`` random word positions per row (padding and special tokens rank last).
    order = torch.rand((batch, length), generator=generator).to(device).masked_fill(~is_word, -1.0)
    positions = order.topk(min(tries, length), dim=1).indices  # (B, K)
    edge = torch.zeros((batch, 1), dtype=tokens.dtype, device=device)
    before = torch.cat([edge, tokens[:, :-1]], dim=1).gather(1, positions)[:, :, None]  # (B, K, 1)
    after = torch.cat([tokens[:, 1:], edge], dim=1).gather(1, positions)[:, :, None]
    current = tokens.gather(1, positions)[:, :, None]
    vocabulary = torch.arange(num_special, pairs.vocab_size, device=device)[None, None, :]  # (1, 1, V')
    fits = pairs.contains(before, vocabulary) & pairs.contains(vocabulary, after) & (vocabulary != current)
    fits &= is_word.gather(1, positions)[:, :, None]  # (B, K, V')
    usable = fits.any(-1)  # (B, K)
    found = usable.any(1)
    slot = (usable.float() * torch.arange(usable.shape[1], 0, -1, device=device)).argmax(1)  # the first usable
    rows = torch.arange(batch, device=device)
    scores = torch.rand(fits.shape[0], fits.shape[2], generator=generator).to(device)
    word = scores.masked_fill(~fits[rows, slot], -1.0).argmax(1) + num_special  # (B,) a random candidate
    substituted = tokens.clone()
    substituted[rows[found], positions[rows, slot][found]] = word[found].to(tokens.dtype)
    return substituted, found


def exchangeable(tokens: torch.Tensor, num_special: int, pairs: WordPairs | None = None) -> torch.Tensor:
    """Which two words of each caption may trade places: each is seen in the other's place.

    Words at positions ``p < q - 1`` of one caption may trade places when ``pairs`` holds the word
    pairs the swap creates: (word before p, word q), (word q, word after p), (word before q, word
    p) and (word p, word after q). Neighbouring words, equal words and special tokens never trade.

    Args:
        tokens: (B, L) token ids; ids below ``num_special`` are never moved (they may be neighbours).
        num_special: Number of special token ids, which occupy ids ``0 … num_special - 1``.
        pairs: Where words were seen; None = the batch's own pairs.

    Returns:
        (B, L, L) bool, True at ``[b, p, q]`` when words ``p`` and ``q`` of caption ``b`` may trade.
    """
    batch, length = tokens.shape
    device = tokens.device
    if pairs is None:
        pairs = WordPairs.of(tokens, int(tokens.max()) + 1)
    # The two neighbours of every position; the sequence ends count as padding (never a real pair).
    edge = torch.zeros((batch, 1), dtype=tokens.dtype, device=device)
    before = torch.cat([edge, tokens[:, :-1]], dim=1)  # (B, L)
    after = torch.cat([tokens[:, 1:], edge], dim=1)
    p_word, q_word = tokens[:, :, None], tokens[:, None, :]  # (B, L, 1), (B, 1, L): word at p, at q
    fits_p = pairs.contains(before[:, :, None], q_word) & pairs.contains(q_word, after[:, :, None])  # q's word at p
    fits_q = pairs.contains(before[:, None, :], p_word) & pairs.contains(p_word, after[:, None, :])  # p's word at q
    is_word = tokens >= num_special
    position = torch.arange(length, device=device)
    apart = position[None, :] > position[:, None] + 1  # (L, L): p < q - 1
    return fits_p & fits_q & (p_word != q_word) & is_word[:, :, None] & is_word[:, None, :] & apart


def swap_bound_words(
    tokens: torch.Tensor,
    num_special: int,
    generator: torch.Generator | None = None,
    pairs: WordPairs | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchange two words within each caption where ``pairs`` shows each can stand in the other's place.

    Args:
        tokens: (B, L) token ids; see :func:`exchangeable`.
        num_special: Number of special token ids, which occupy ids ``0 … num_special - 1``.
        generator: Random generator choosing among a caption's possible exchanges.
        pairs: Where words were seen (the corpus); None = the batch's own pairs.

    Returns:
        swapped: (B, L) token ids, each row with one exchange where ``found`` (else unchanged).
        found: (B,) bool, whether the row had a possible exchange.
    """
    batch, length = tokens.shape
    possible = exchangeable(tokens, num_special, pairs).flatten(1)  # (B, L * L)
    scores = torch.rand((batch, length * length), generator=generator).to(tokens.device)
    choice = scores.masked_fill(~possible, -1.0).argmax(dim=1)  # (B,) a random possible pair
    p, q = choice // length, choice % length
    found = possible.any(dim=1)
    rows = torch.arange(batch, device=tokens.device)[found]
    swapped = tokens.clone()
    swapped[rows, p[found]] = tokens[rows, q[found]]
    swapped[rows, q[found]] = tokens[rows, p[found]]
    return swapped, found


def binding_twins(
    tokens: torch.Tensor, num_special: int, pairs: WordPairs | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each caption, its binding twins of every kind in :data:`TWIN_KINDS`, where it has them.

    Knowing nothing of what words mean, the twins read the captions' structure off
    :func:`exchangeable`: aligned positions ``d`` apart whose words are exchangeable or equal form
    two parallel phrases ("a small *red circle* left of a big *blue circle*"). A phrase is taken
    as whole when what follows it differs from what follows the other only as much as ends and
    shared words do: the text ends, the phrases meet, or the next words are equal. Phrases in
    English end with their head word, so the phrases' last pair is the head words (``noun``; none
    when they are the same word), the exchangeable pair before it a modifier (``attribute``), and
    exchanging every pair exchanges the objects (``relation``: "a big blue circle left of a small
    red circle" says the relation backwards). Captions without two whole parallel phrases of two or
    more words have no twin: one lone exchangeable pair could be either kind.

    Returns:
        ``{kind: (twins, found)}``: twins (B, L) token ids (rows without such a twin unchanged) and
        found (B,) bool.
    """
    possible = exchangeable(tokens, num_special, pairs).cpu()
    rows = tokens.cpu()
    twins = {kind: rows.clone() for kind in TWIN_KINDS}
    found = {kind: torch.zeros(tokens.shape[0], dtype=torch.bool) for kind in TWIN_KINDS}
    for row, (words, grid) in enumerate(zip(rows.tolist(), possible)):
        phrases = _parallel_phrases(words, grid, num_special)
        if phrases is None:
            continue
        swaps = [(p, q) for p, q in phrases if bool(grid[p, q])]
        head_exchangeable = bool(grid[phrases[-1]])
        modifiers = swaps[:-1] if head_exchangeable else swaps
        chosen = {"attribute": modifiers[-1:], "noun": swaps[-1:] if head_exchangeable else [], "relation": swaps}
        for kind, exchanges in chosen.items():
            for p, q in exchanges:
                twins[kind][row, p], twins[kind][row, q] = rows[row, q], rows[row, p]
            found[kind][row] = bool(exchanges)
    return {kind: (twins[kind].to(tokens.device), found[kind].to(tokens.device)) for kind in TWIN_KINDS}


def _parallel_phrases(words: list[int], grid: torch.Tensor, num_special: int) -> list[tuple[int, int]] | None:
    """The aligned positions [(p, p + d), …] of a caption's two whole parallel phrases (see
    :func:`binding_twins`), the longest if several, or None."""
    length = len(words)

    def aligned(p: int, q: int) -> bool:  # exchangeable words, or the same word (not a special token)
        return bool(grid[p, q]) or (words[p] == words[q] >= num_special)

    best = None
    for p, q in grid.nonzero().tolist():
        if p > 0 and q - 1 > p and bool(grid[p - 1, q - 1]):
            continue  # not the first exchangeable pair of its run: that pair's turn reads the run
        run = [(p, q)]
        while run[-1][0] + 1 < run[0][1] and run[-1][1] + 1 < length and aligned(run[-1][0] + 1, run[-1][1] + 1):
            run.append((run[-1][0] + 1, run[-1][1] + 1))
        end_p, end_q = run[-1][0] + 1, run[-1][1] + 1
        whole = end_p == run[0][1] or end_q >= length or min(words[end_p], words[end_q]) < num_special
        if whole and len(run) >= 2 and (best is None or len(run) > len(best)):
            best = run
    return best


def hard_negatives(
    tokens: torch.Tensor,
    num_special: int,
    binding_share: float = 0.0,
    generator: torch.Generator | None = None,
    pairs: WordPairs | None = None,
    from_corpus: bool = False,
) -> torch.Tensor:
    """One hard negative per caption: a binding swap for a ``binding_share`` of the captions that
    have one (:func:`swap_bound_words`), a one-word swap for the rest (:func:`swap_one_word`, or
    with ``from_corpus`` :func:`substitute_one_word` where a caption has a substitute).

    With ``binding_share`` 0 and ``from_corpus`` off this is :func:`swap_one_word` and draws no
    further random numbers. ``pairs``: where words were seen (the corpus); None = the batch's own pairs.
    """
    swapped = swap_one_word(tokens, num_special, generator)
    if from_corpus:
        if pairs is None:
            pairs = WordPairs.of(tokens, int(tokens.max()) + 1)
        substituted, found = substitute_one_word(tokens, num_special, pairs, generator)
        swapped = torch.where(found[:, None], substituted, swapped)
    if binding_share <= 0:
        return swapped
    bound, found = swap_bound_words(tokens, num_special, generator, pairs)
    chosen = found & (torch.rand(tokens.shape[0], generator=generator).to(tokens.device) < binding_share)
    return torch.where(chosen[:, None], bound, swapped)
