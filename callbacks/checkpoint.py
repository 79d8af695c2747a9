"""Checkpointing whose ``last.ckpt`` always holds the weights training ended with."""

from __future__ import annotations

import os

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class FinalCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends.

    Lightning's own ``save_last`` refreshes ``last.ckpt`` only together with a periodic save, so a
    run stopped by ``max_time``, ``max_epochs`` or ``max_steps`` between two of them would leave a
    stale ``last.ckpt`` behind and lose the steps since. Takes every ``ModelCheckpoint`` argument.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.save_last or trainer.fast_dev_run or self.dirpath is None:
            return super().on_train_end(trainer, pl_module)
        name = self.format_checkpoint_name(
            {"epoch": trainer.current_epoch, "step": trainer.global_step}, self.CHECKPOINT_NAME_LAST
        )
        path = os.path.join(self.dirpath, os.path.basename(name))
        trainer.save_checkpoint(path)
        self.last_model_path = path
