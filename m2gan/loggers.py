"""Experiment loggers: W&B that works offline by default, and where a run's files go."""

from __future__ import annotations

import netrc
import os
from typing import Literal
from urllib.parse import urlparse

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger


def wandb_logged_in() -> bool:
    """True when a W&B API key is available (``WANDB_API_KEY`` or a ``.netrc`` entry for the server)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        # NETRC points to another file, as for wandb itself and curl.
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class AutoWandbLogger(WandbLogger):
    """``WandbLogger`` that logs offline unless the user is logged in.

    An explicit ``WANDB_MODE`` in the environment always wins. Offline runs are written under
    ``save_dir/wandb`` and can be uploaded later with ``wandb sync``.

    Args:
        save_dir: Folder of W&B files and of this run's checkpoints (``save_dir/project/run_id``).
        project: W&B project name.
        name: Display name of the run; None lets W&B choose.
        mode: ``"auto"`` (online if logged in, else offline), ``"online"`` or ``"offline"``.
        log_model: Upload checkpoints as W&B artifacts (online runs only).
    """

    def __init__(
        self,
        save_dir: str = "runs",
        project: str = "m2gan",
        name: str | None = None,
        mode: Literal["auto", "online", "offline"] = "auto",
        log_model: bool = False,
    ) -> None:
        self.mode = resolve_wandb_mode(mode)
        os.makedirs(save_dir, exist_ok=True)
        # wandb.init(mode=...) receives the mode; WandbLogger forwards unknown keyword arguments to it.
        super().__init__(
            save_dir=save_dir, project=project, name=name, log_model=log_model and self.mode == "online", mode=self.mode
        )


def resolve_wandb_mode(mode: str) -> str:
    """The W&B mode a run will use: ``WANDB_MODE`` if set, else ``mode`` with "auto" resolved."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if wandb_logged_in() else "offline"
    return mode


def run_dir(trainer: pl.Trainer) -> str:
    """The folder of this run's own files (checkpoints, config, sample PNGs): unique per run."""
    logger = trainer.logger
    if isinstance(logger, WandbLogger):
        return os.path.join(logger.save_dir, str(logger.name), str(logger.version))
    if logger is not None and getattr(logger, "log_dir", None):
        return logger.log_dir
    return trainer.default_root_dir
