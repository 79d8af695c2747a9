"""A shuffling sampler that can resume in the middle of an epoch, on one process or several."""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Shuffle ``size`` indices with a permutation seeded by ``(seed, epoch)``; optionally skip ahead.

    The order depends on nothing but the seed and the epoch (Lightning calls :meth:`set_epoch`), not
    on the global random state, so a resumed run draws the same permutation as the run it continues
    and, with ``start``, picks up at the first sample it had not trained on.

    Under several processes each takes every ``replicas``-th sample of the remaining order, from its
    ``rank`` on, all ranks the same count: process r's k-th batch is the same whether the run was
    interrupted or not. Being a ``DistributedSampler``, Lightning uses it as it is instead of
    wrapping it in one that would split the full, unskipped epoch.

    Args:
        size: Number of samples.
        seed: Base seed of the permutations.
        start: Samples of the first epoch iterated to skip (those an interrupted run already used),
            counted over all processes.
        visits: Yield each index as the key ``epoch * size + index`` of its visit in this epoch, for a
            dataset whose augmentation is a function of the visit
            (:class:`~m2gan.data.captioned.CaptionedImages`).
        replicas: Number of processes sharing the epoch.
        rank: This process's rank among them.
    """

    def __init__(
        self, size: int, seed: int = 0, start: int = 0, visits: bool = False, replicas: int = 1, rank: int = 0
    ) -> None:
        # DistributedSampler's own constructor needs a dataset and reads torch.distributed; the
        # attributes Lightning and PyTorch read are set here instead.
        self.size, self.seed, self.start, self.epoch, self.visits = size, seed, start, 0, visits
        self.num_replicas, self.rank, self.shuffle, self.drop_last = replicas, rank, True, True

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s permutation from the next iteration on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.num_replicas

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        start, self.start = self.start, 0  # only the first iteration after a resume skips
        remaining = order[start:]
        usable = len(remaining) // self.num_replicas * self.num_replicas  # every rank the same count
        offset = self.epoch * self.size if self.visits else 0
        yield from (offset + index for index in remaining[self.rank : usable : self.num_replicas])
