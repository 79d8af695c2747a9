"""Shared fixtures: tiny data and models so each test runs in seconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from m2gan.data import ShapesDataModule
from m2gan.model import M2GAN

TINY_MODEL = dict(
    noise_dim=8, text_width=16, sentence_dim=16, g_channels=8, d_channels=8, max_channels=16, embed_dim=16,
    captioner_width=16, captioner_layers=1, captioner_channels=4,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    # Tests never reach W&B's server and never read the developer's own login.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    torch.manual_seed(0)


@pytest.fixture
def datamodule() -> ShapesDataModule:
    return ShapesDataModule(batch_size=8, train_size=64, val_size=16, test_size=16, tokenizer_fit_size=300)


@pytest.fixture
def tiny_model(datamodule) -> M2GAN:
    model = M2GAN(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, **TINY_MODEL)
    model.set_tokenizer(datamodule.tokenizer)
    return model
