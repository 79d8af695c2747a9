"""Callbacks: the final checkpoint is never stale; sample grids are written with their prompts."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from PIL import Image

from callbacks import FinalCheckpoint, SampleGrid
from m2gan.model import M2GAN


def _trainer(tmp_path, callbacks, batches):
    return pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


def test_last_checkpoint_holds_the_final_weights(tmp_path, datamodule, tiny_model):
    checkpoint = FinalCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=4, save_top_k=-1)
    _trainer(tmp_path, [checkpoint], batches=3).fit(tiny_model, datamodule)
    # 3 batches = 6 optimizer steps: a periodic save at step 4, the end at step 6
    assert [p.name for p in (tmp_path / "ckpt").glob("*step=4.ckpt")] == ["epoch=0-step=4.ckpt"]
    restored = M2GAN.load(tmp_path / "ckpt" / "last.ckpt")
    assert int(restored.g_steps) == 3
    for name, value in tiny_model.generator_ema.state_dict().items():
        torch.testing.assert_close(restored.generator_ema.state_dict()[name], value)


def test_sample_grid_writes_pngs_with_one_row_per_prompt(tmp_path, datamodule, tiny_model):
    prompts = ["a red circle at the left", "a small blue square at the top"]
    grid = SampleGrid(prompts, every_n_steps=2, num_images=3)
    trainer = _trainer(tmp_path, [grid], batches=2)
    trainer.fit(tiny_model, datamodule)
    pngs = sorted((tmp_path / "samples").glob("step_*.png"))
    assert [p.name for p in pngs] == ["step_0000002.png", "step_0000004.png"]
    width, height = Image.open(pngs[-1]).size
    assert height > 2 * 32 * grid.scale and width >= 3 * 32 * grid.scale
