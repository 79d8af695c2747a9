"""Shared fixtures: tiny data and models so each test runs in seconds on a CPU."""

from __future__ import annotations

import os

import pytest
import torch

from m2gan.data import CaptionDataModule
from m2gan.model import M2GAN
from tests.helpers import TINY_MODEL, model_of

WORKERS = 2
"""pytest-xdist workers of a plain ``pytest``: one per core of the 2-core machines the suite is sized for."""


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    # Two workers by default where pytest-xdist is installed (its `-n`/`--dist` still choose: `-n 0`
    # runs in one process); without it, a plain `pytest` runs in one process instead of failing on
    # an unknown `-n` in addopts. worksteal rebalances when a slow test holds one worker.
    if getattr(config.option, "numprocesses", "no xdist") is None and not os.environ.get("PYTEST_XDIST_WORKER"):
        config.option.numprocesses = WORKERS
        if config.option.dist == "no":
            config.option.dist = "worksteal"


def pytest_configure(config):
    # Under pytest-xdist, the workers share the machine's cores: each worker and every process it
    # starts (train.py, DDP ranks) computes on its share, so two workers do not fight over threads.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def m2gan_cache(tmp_path_factory):
    """One cache folder for the whole test run, shared by pytest-xdist's workers (their temporary
    folders are siblings): the shapes judge and each evaluator are trained once, by whichever test
    needs them first, while the others wait for its file (``m2gan.cache.made_once``)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / "m2gan-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def judge(m2gan_cache) -> str:
    """A shapes judge at test size (32 px), trained once per test run, for the tiny runs' FID and
    attribute accuracy (``tests.helpers.with_callbacks``): the default recipe's judge takes a minute."""
    from m2gan.eval.shapes_judge import SMOKE_RECIPE, JudgeRecipe, judge_file

    return str(judge_file(JudgeRecipe(**SMOKE_RECIPE), m2gan_cache))


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path, m2gan_cache):
    # Tests never reach W&B's server, never read the developer's own login or ~/.cache/m2gan.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifact staging
    monkeypatch.setenv("M2GAN_CACHE", str(m2gan_cache))
    torch.manual_seed(0)


@pytest.fixture
def datamodule() -> CaptionDataModule:
    return CaptionDataModule(batch_size=8, train_size=64, val_size=16, test_size=16, tokenizer_fit_size=300)


@pytest.fixture
def tiny_model(datamodule) -> M2GAN:
    model = model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, **TINY_MODEL)
    model.set_tokenizer(datamodule.tokenizer)
    return model


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """A checkpoint of a tiny model trained for two batches, to sample from (not to be modified)."""
    import pytorch_lightning as pl

    torch.manual_seed(0)
    datamodule = CaptionDataModule(batch_size=8, train_size=16, val_size=8, test_size=8, tokenizer_fit_size=300)
    model = model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, **TINY_MODEL)
    trainer = pl.Trainer(
        max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    trainer.save_checkpoint(path)
    return str(path)
