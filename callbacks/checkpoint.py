"""Checkpointing whose ``last.ckpt`` always holds the weights training ended with, and resumes."""

from __future__ import annotations

import os

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class FinalCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends.

    Lightning's own ``save_last`` refreshes ``last.ckpt`` only together with a periodic save, so a
    run stopped by ``max_time``, ``max_epochs`` or ``max_steps`` between two of them would leave a
    stale ``last.ckpt`` behind and lose the steps since. A run stopped in the middle of an epoch
    (``max_steps``, ``max_time``) writes it after its last batch, while the epoch is still open:
    written after the loop has closed the epoch, it would make a resumed run skip the epoch's
    remaining batches (and, in a one-epoch job, train nothing). Takes every ``ModelCheckpoint`` argument.
    """

    _final_step: int | None = None  # global step of the last.ckpt written as training stopped

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        stops = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
        if stops and self._writes_final(trainer):
            self._save_final(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._writes_final(trainer):
            return super().on_train_end(trainer, pl_module)
        if self._final_step != trainer.global_step:  # not already written by the batch that stopped
            self._save_final(trainer)

    def _writes_final(self, trainer: pl.Trainer) -> bool:
        return bool(self.save_last) and not trainer.fast_dev_run and self.dirpath is not None

    def _save_final(self, trainer: pl.Trainer) -> None:
        name = self.format_checkpoint_name(
            {"epoch": trainer.current_epoch, "step": trainer.global_step}, self.CHECKPOINT_NAME_LAST
        )
        path = os.path.join(self.dirpath, os.path.basename(name))
        self.last_model_path, self._final_step = path, trainer.global_step
        self._save_checkpoint(trainer, path)  # also tells the loggers (log_model uploads it)
