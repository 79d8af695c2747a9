"""A shuffling sampler that can resume in the middle of an epoch."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffle ``size`` indices with a permutation seeded by ``(seed, epoch)``; optionally skip ahead.

    The order depends on nothing but the seed and the epoch (Lightning calls :meth:`set_epoch`), not
    on the global random state, so a resumed run draws the same permutation as the run it continues
    and, with ``start``, picks up at the first sample it had not trained on.

    Args:
        size: Number of samples.
        seed: Base seed of the permutations.
        start: Samples of the first epoch iterated to skip (those an interrupted run already used).
        visits: Yield each index as the key ``epoch * size + index`` of its visit in this epoch, for a
            dataset whose augmentation is a function of the visit
            (:class:`~m2gan.data.captioned.CaptionedImages`).
    """

    def __init__(self, size: int, seed: int = 0, start: int = 0, visits: bool = False) -> None:
        self.size, self.seed, self.start, self.epoch, self.visits = size, seed, start, 0, visits

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s permutation from the next iteration on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        start, self.start = self.start, 0  # only the first iteration after a resume skips
        offset = self.epoch * self.size if self.visits else 0
        yield from (offset + index for index in order[start:])
