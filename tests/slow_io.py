"""A checkpoint writer slowed down on purpose, so a test can kill the process in the middle of a write."""

from __future__ import annotations

import io
import os
import time

import pytorch_lightning as pl
import torch

from m2gan.checkpoint_io import AtomicCheckpointIO


class SlowCheckpointIO(AtomicCheckpointIO):
    """From its ``slow_from``-th write on, write half the bytes, leave a marker file, then sleep.

    Args:
        slow_from: Number (1-based) of the first slowed write.
        marker: File created when a slowed write is half done.
        pause: Seconds the slowed write sleeps halfway.
    """

    def __init__(self, slow_from: int = 1, marker: str = "writing", pause: float = 60.0) -> None:
        super().__init__()
        self.slow_from, self.marker, self.pause = slow_from, marker, pause
        self.writes = 0

    def write(self, checkpoint, path) -> None:
        self.writes += 1
        if self.writes < self.slow_from:
            return super().write(checkpoint, path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        with open(path, "wb") as file:
            file.write(data[: len(data) // 2])
            file.flush()
            os.fsync(file.fileno())
            open(self.marker, "w").close()
            time.sleep(self.pause)
            file.write(data[len(data) // 2 :])


class SlowBatches(pl.Callback):
    """Sleeps after every training batch, so a test can kill a tiny run between two checkpoints."""

    def __init__(self, pause: float = 0.25) -> None:
        self.pause = pause

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.pause)
