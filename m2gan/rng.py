"""Global random-number states as plain tensors and tuples: saved in checkpoints, restored on resume."""

from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    """The states of torch (CPU and every CUDA device), NumPy's and Python's global generators.

    Only tensors, ints, floats and tuples: a checkpoint holding them loads with ``weights_only=True``.
    """
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }


def restore(state: dict) -> None:
    """Set the global generators to a :func:`capture`'d state (CUDA only if this machine has the devices)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
