"""Experiment loggers: W&B that works offline by default, one step axis, and where a run's files go."""

from __future__ import annotations

import fnmatch
import json
import netrc
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlparse

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from m2gan.atomic import atomic_path

STEP_METRIC = "trainer/batch"
"""The x-axis of every W&B panel: training batches done (one discriminator step each)."""

SUMMARIES = (
    ("*fid*", "min"),
    ("*kid*", "min"),
    ("*loss*", "min"),
    ("*bleu*", "max"),
    ("*acc*", "max"),
    ("*precision*", "max"),
    ("*recall*", "max"),
)
"""What the run summary keeps of a ``val/``/``test/`` metric, by name pattern (the first match wins):
the best value, so a run table shows the best FID rather than the last one."""

RUN_RECORD = "wandb-run.json"
"""File in the run folder recording the W&B run and the last step logged to it, for resuming."""


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


def summary_of(name: str) -> str | None:
    """``"min"``/``"max"`` for an evaluation metric's run summary, None for anything else (last value)."""
    if not name.startswith(("val/", "test/")):
        return None
    return next((summary for pattern, summary in SUMMARIES if fnmatch.fnmatch(name, pattern)), None)


class AutoWandbLogger(WandbLogger):
    """``WandbLogger`` that logs offline unless the user is logged in, on one step axis.

    An explicit ``WANDB_MODE`` in the environment always wins. Offline runs are written under
    ``save_dir/wandb``; ``wandb sync`` uploads them later.

    Every record (metrics, sample grids, tables) is plotted against ``trainer/batch``, the number
    of training batches done: ``step_source()`` when set (``M2GAN`` sets it at setup), whatever step
    the caller passes otherwise. Lightning passes its own count, which during validation is one
    batch behind. ``val/`` and ``test/`` metrics keep
    their best value in the run summary (FID and losses the lowest, BLEU and accuracies the highest).

    ``train.py fit --ckpt_path`` continues the checkpoint's W&B run (same id, same run folder)
    when the checkpoint lies in ``save_dir/project/<run id>/checkpoints`` and is not older than the
    last batch that run logged; otherwise it starts a new run, so no batch is logged twice.

    Args:
        save_dir: Folder of W&B files and of this run's checkpoints (``save_dir/project/run_id``).
        project: W&B project name.
        name: Display name of the run; None lets W&B choose.
        mode: ``"auto"`` (online if logged in, else offline), ``"online"`` or ``"offline"``.
        log_model: Checkpoints become W&B model artifacts: False, True (each checkpoint as it is
            written when all are kept, else the kept ones at the end of training) or "all" (every
            checkpoint as it is written). Offline, they are staged under ``WANDB_DATA_DIR`` (a copy
            of each file) and uploaded by ``wandb sync``.
        id: W&B run id: pass an existing one (with ``resume``) to log into that run.
        resume: W&B's resume policy for ``id`` ("allow", "must", "never"); None lets W&B decide.
        entity: W&B user or team owning the run; None: the logged-in user's default.
        tags: Tags of the run.
        group: Group of the run (e.g. one sweep or one DDP job).
        notes: Longer description of the run.
        continue_run: With ``train.py fit --ckpt_path``, continue the checkpoint's W&B run; False
            always starts a new one.
        init_kwargs: Any other ``wandb.init`` argument, e.g. ``{job_type: train, config_exclude_keys: [...]}``.
        **kwargs: Passed to ``WandbLogger`` and from there to ``wandb.init`` (Python use).
    """

    def __init__(
        self,
        save_dir: str = "runs",
        project: str = "m2gan",
        name: str | None = None,
        mode: Literal["auto", "online", "offline"] = "auto",
        log_model: bool | Literal["all"] = False,
        id: str | None = None,  # noqa: A002 - wandb.init's own name
        resume: Literal["allow", "must", "never"] | None = None,
        entity: str | None = None,
        tags: list[str] | None = None,
        group: str | None = None,
        notes: str | None = None,
        continue_run: bool = True,
        init_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.mode = resolve_wandb_mode(mode)
        self.continue_run = continue_run
        given = {"entity": entity, "tags": tags, "group": group, "notes": notes, "resume": resume}
        extra = {**(init_kwargs or {}), **{k: v for k, v in given.items() if v is not None}, **kwargs}
        # wandb.init(mode=...) receives the mode; WandbLogger forwards unknown keyword arguments to it.
        # mode rather than offline=True: WandbLogger refuses log_model with offline=True, while W&B
        # itself stages offline artifacts for `wandb sync`.
        super().__init__(
            save_dir=save_dir, project=project, name=name, id=id, log_model=log_model, mode=self.mode, **extra
        )
        if self._wandb_init.get("anonymous") is None:  # Lightning passes None, which W&B warns about on every run
            self._wandb_init.pop("anonymous", None)
        self._defined: set[str] = set()
        self._last_step = -1
        self.step_source: Callable[[], int] | None = None

    def continue_logged_run(self, run_id: str) -> None:
        """Log into the existing W&B run ``run_id`` (before the run starts): same id, same run folder."""
        if self._experiment is not None:
            raise RuntimeError("the W&B run has already started")
        self._id = run_id
        self._wandb_init.update(id=run_id, resume="allow")

    @property
    def experiment(self):
        started = self._experiment is not None
        if not started:  # made only when the run starts: a run refused before it leaves no folder
            os.makedirs(self.save_dir, exist_ok=True)
        run = super().experiment
        if not started and getattr(run, "define_metric", None):
            # Lightning defines its own trainer/global_step axis (optimizer steps); this one wins.
            run.define_metric(STEP_METRIC)
            run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)
            self._last_step = last_logged_step(self.run_folder)
        return run

    @property
    def run_folder(self) -> str:
        """This run's own folder: ``save_dir/project/run_id``."""
        return os.path.join(self.save_dir, str(self.name), str(self.version))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        run = self.experiment
        for name in metrics:
            summary = summary_of(name)
            if summary and name not in self._defined:
                # Named one by one: W&B applies no summary to a glob pattern.
                run.define_metric(name, step_metric=STEP_METRIC, summary=summary)
            self._defined.add(name)
        if self.step_source is not None:
            step = self.step_source()
        if step is None:
            run.log(dict(metrics))
            return
        run.log({**metrics, STEP_METRIC: step})
        if step > self._last_step:
            self._last_step = step
            record = {"id": self.version, "project": self.name, "last_step": step}
            try:
                with atomic_path(os.path.join(self.run_folder, RUN_RECORD)) as path:
                    path.write_text(json.dumps(record))
            except OSError:  # only a later resume needs it; a logging failure never stops training
                pass


def last_logged_step(run_folder: str) -> int:
    """The last step a run folder's W&B run logged, from its record; -1 when nothing is recorded."""
    try:
        with open(os.path.join(run_folder, RUN_RECORD), encoding="utf-8") as file:
            return int(json.load(file)["last_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


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
