"""Exact resume: interrupted at step k and resumed, a run ends bit-identical to one that never stopped."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from m2gan.data import CaptionDataModule
from m2gan.model import M2GAN
from tests.conftest import TINY_MODEL


def _run(tmp_path, max_steps: int = -1, ckpt_path: str | None = None, save_every: int | None = None):
    pl.seed_everything(0, workers=True)
    data = CaptionDataModule(batch_size=8, train_size=64, val_size=16, test_size=16, tokenizer_fit_size=300)
    model = M2GAN(vocab_size=data.vocab_size, max_length=data.max_length, **TINY_MODEL)
    model.set_tokenizer(data.tokenizer)
    callbacks = []
    if save_every:
        callbacks.append(pl.callbacks.ModelCheckpoint(tmp_path, every_n_train_steps=save_every, save_top_k=-1))
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=2, max_steps=max_steps, limit_val_batches=0, logger=False,
        callbacks=callbacks, deterministic=True, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=bool(save_every),
    )  # fmt: skip
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, trainer


def test_resume_mid_epoch_is_bit_exact(tmp_path):
    straight, straight_trainer = _run(tmp_path / "straight")  # 2 epochs of 8 batches
    # Interrupted after 3 batches (6 optimizer steps) of the first epoch, then resumed.
    _run(tmp_path / "first", max_steps=6, save_every=6)
    (checkpoint,) = (tmp_path / "first").glob("*step=6.ckpt")
    resumed, resumed_trainer = _run(tmp_path / "second", ckpt_path=str(checkpoint))

    assert resumed_trainer.global_step == straight_trainer.global_step == 32
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name  # generator, discriminator, EMA, counters
    for mine, theirs in zip(resumed_trainer.optimizers, straight_trainer.optimizers):
        for p_mine, p_theirs in zip(mine.state.values(), theirs.state.values()):
            for key in p_theirs:
                assert torch.equal(p_mine[key], p_theirs[key]), key
