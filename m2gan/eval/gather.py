"""Per-sample rows of every process, each sample once: how evaluation adds up under DDP."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist


def gather_by_index(indices: Sequence[int], columns: dict[str, torch.Tensor | list]) -> dict[str, torch.Tensor | list]:
    """Every process's rows, ordered by sample index, each index kept once.

    ``columns`` maps a name to this rank's rows (a tensor or a list, one row per index; empty dict
    if this rank had no rows). Under ``torch.distributed`` all ranks' rows are gathered to every
    rank; outside it the rows are only sorted. A sampler that pads ranks with repeated samples
    cannot make an image count twice.
    """
    parts = [(list(indices), {k: v.cpu() if torch.is_tensor(v) else list(v) for k, v in columns.items()})]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, parts[0])
        parts = gathered
    parts = [(index, part) for index, part in parts if index]
    all_indices = [i for index, _ in parts for i in index]
    _, first = np.unique(np.asarray(all_indices, dtype=np.int64), return_index=True)
    merged: dict[str, torch.Tensor | list] = {}
    for key in parts[0][1] if parts else ():
        values = [part[key] for _, part in parts]
        if torch.is_tensor(values[0]):
            merged[key] = torch.cat(values)[torch.from_numpy(first)]
        else:
            flat = [row for value in values for row in value]
            merged[key] = [flat[i] for i in first]
    return merged
