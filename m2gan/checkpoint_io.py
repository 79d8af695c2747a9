"""Checkpoint files that a crash never corrupts."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from m2gan.cache import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, fsync it, then rename it into place.

    A process killed at any moment — SIGKILL, preemption, power loss — leaves either the previous
    complete file under the checkpoint's name (``last.ckpt`` included) or the new complete one,
    never a truncated mix; a leftover ``.partial`` temporary is all it can leave behind. The
    folder is fsync'ed after the rename so the new name survives a power loss too.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_path(path) as temporary:
            self.write(checkpoint, temporary)
        descriptor = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def write(self, checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
        """Serialise ``checkpoint`` to ``path`` (the temporary file); a hook for tests that slow it down."""
        torch.save(checkpoint, path)
