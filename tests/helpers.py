"""What the tests share: the tiny run's config, train.py's CLI in this process or in a child process,
a tiny training without the CLI, test data files, and readers of what a run left behind (files, W&B runs).

Run the CLI in this process (:func:`run_cli`) unless the process boundary is what a test is about
(SIGKILL, DDP ranks, an installed console script): a child process pays seconds of imports first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import traceback
import warnings
from pathlib import Path
from unittest import mock

import pytest
import pytorch_lightning as pl
import yaml
from PIL import Image

from callbacks import FinalCheckpoint
from m2gan.data import CaptionDataModule
from m2gan.model import M2GAN
from m2gan.settings import overridden

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
CONFIGS = ROOT / "tests" / "configs"
TINY_RUN = [f"--config={CONFIGS / 'tiny.yaml'}"]
"""The tiny model, data and trainer, keeping the callbacks of the config files before it."""
TINY = [*TINY_RUN, f"--config={CONFIGS / 'tiny-callbacks.yaml'}"]
"""Arguments of every tiny CLI run: tiny model, data and trainer, with the callbacks the tests read."""
WANDB = [f"--config={CONFIGS / 'wandb.yaml'}"]
"""Added after :data:`TINY` where W&B is the subject: the default job's logger (offline in tests)."""
TINY_MODEL = {
    name: value
    for key, table in yaml.safe_load((CONFIGS / "tiny.yaml").read_text())["model"].items()
    for name, value in (table.items() if isinstance(table, dict) else [(key, table)])
}
"""The tiny run's model settings by their own names (flat), for tests that build an ``M2GAN`` directly."""


def model_of(**settings) -> M2GAN:
    """An ``M2GAN`` of ``settings`` given by their own names (``swap_weight=0``), the rest at their defaults."""
    return M2GAN(**overridden({}, **settings))


@dataclasses.dataclass
class Result:
    """What a CLI run ended with, as a child process would show it."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(args: list[str], cwd: str | os.PathLike, env: dict[str, str] | None = None) -> Result:
    """Run ``train.py``'s CLI in this process, in ``cwd``, and return what a child process would have shown.

    ``env`` is set for the run and the environment restored afterwards (Lightning sets ``PL_GLOBAL_SEED``).
    Warnings are added to ``stderr`` as a child would print them; an uncaught exception is a
    ``Traceback`` in ``stderr`` and exit status 1; a W&B run still open is finished, as a child's exit would.
    """
    import train

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    argv = [str(ROOT / "train.py"), *args]
    patched = mock.patch.dict(os.environ, env or {}), mock.patch.object(sys, "argv", argv)
    with patched[0], patched[1], warnings.catch_warnings(record=True) as caught:
        # As a child process filters them: pytest shows deprecations, Python hides them outside __main__.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    train.run()  # reads sys.argv, as train.py does
                    code = 0
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                    if isinstance(exit_.code, str):
                        print(exit_.code, file=sys.stderr)
                except Exception:  # noqa: BLE001 - shown as a child process would show it
                    traceback.print_exc()
                    code = 1
                finally:
                    finish_wandb()
        finally:
            os.chdir(previous)
    shown = "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)
    return Result(code, out.getvalue(), err.getvalue() + shown)


def finish_wandb() -> None:
    """As a process's exit would: finish W&B's run and stop its service."""
    # As a child's exit would: the run finished, and W&B's service stopped, so that the next run's
    # service starts in that run's folder (a service keeps resolving relative paths from its own).
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()


def run_train(args: list[str], cwd: str | os.PathLike, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python train.py ARGS`` in a child process: only where the process boundary is the subject."""
    environment = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), **(env or {})}
    # A W&B service started by an earlier test in this process must not serve the child: some
    # wandb versions would then write the child's run files relative to the service's own folder.
    environment.pop("WANDB_SERVICE", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def with_callbacks(folder: Path, *extra: dict, judge: str | os.PathLike | None = None) -> list[str]:
    """Arguments (after :data:`TINY`) for the tiny run's callbacks and ``extra`` ones (``class_path`` and
    ``init_args`` dicts), written to ``folder/callbacks.yaml``.

    With ``judge`` (the ``judge`` fixture's, trained once per test run), the metric callbacks at test
    size come too: FID and AttributeAccuracy read that judge instead of training the default one;
    TextImageConsistency trains a small evaluator.
    """
    listed = yaml.safe_load((CONFIGS / "tiny-callbacks.yaml").read_text())["trainer"]["callbacks"]
    metrics = [
        {"class_path": "callbacks.FID", "init_args": {
            "feature_extractor": "shapes-judge", "feature_extractor_weights_path": str(judge), "num_samples": 64,
            "metrics": ["fid", "prc"]}},
        {"class_path": "callbacks.AttributeAccuracy", "init_args": {"judge_weights_path": str(judge), "num_samples": 64}},
        {"class_path": "callbacks.TextImageConsistency", "init_args": {
            "num_samples": 16, "candidates": 8, "diversity_prompts": 4, "diversity_images": 2, "pool_size": 200,
            "steps": 20}},
    ]  # fmt: skip
    path = folder / "callbacks.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [*listed, *(metrics if judge else []), *extra]}}))
    return [f"--config={path}"]


def checkpoints(folder: Path) -> list[Path]:
    """Each run's ``last.ckpt`` under ``folder/runs``."""
    return sorted(folder.glob("runs/m2gan/*/checkpoints/last.ckpt"))


def leftovers(folder: Path) -> list[str]:
    """Run folders and W&B runs under ``folder/runs``."""
    runs = folder / "runs"
    found = [str(p.relative_to(folder)) for p in runs.glob("m2gan/*")] if runs.is_dir() else []
    return found + [str(p.relative_to(folder)) for p in runs.glob("wandb/*run-*")]


def one_line(err: str, pattern: str) -> None:
    """``err`` is one ``error:`` line matching ``pattern``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert re.search(pattern, lines[0]), lines[0]


def jpeg_bytes(colour=(200, 40, 40), size=(40, 40)) -> bytes:
    """A one-colour JPEG picture's bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def shards(folder: Path, count: int = 4, per_shard: int = 3) -> str:
    """``count`` WebDataset tar shards of ``per_shard`` pictures and captions each, and one broken sample
    per shard; returns their brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(count):
        with tarfile.open(folder / f"shard-{s:03d}.tar", "w") as tar:
            members = []
            for k in range(per_shard):
                key = f"s{s}_{k}"
                members += [
                    (f"{key}.jpg", jpeg_bytes((40 * k, 50, 60))),
                    (f"{key}.txt", f"shard {s} sample {k}".encode()),
                ]
            members += [("bad.jpg", b"not an image"), ("bad.txt", b"a caption"), ("lonely.json", b'{"text": "x"}')]
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(folder / f"shard-{{000..{count - 1:03d}}}.tar")


# The shapes data of train_tiny: 8 batches an epoch.
SHAPES = {"batch_size": 8, "train_size": 64, "val_size": 16, "test_size": 16, "tokenizer_fit_size": 300}


def train_tiny(tmp_path, max_steps=-1, ckpt_path=None, save_every=None, data=SHAPES, final_checkpoint=False, **model):
    """Fit a tiny model for 2 epochs (or ``max_steps``) in this process, deterministically, without the CLI;
    optionally from ``ckpt_path``, saving every ``save_every`` optimizer steps or a final checkpoint."""
    pl.seed_everything(0, workers=True)
    data = CaptionDataModule(**data)
    model = model_of(vocab_size=data.vocab_size, max_length=data.max_length, **{**TINY_MODEL, **model})
    model.set_tokenizer(data.tokenizer)
    callbacks = []
    if save_every:
        callbacks.append(pl.callbacks.ModelCheckpoint(tmp_path, every_n_train_steps=save_every, save_top_k=-1))
    if final_checkpoint:
        callbacks.append(FinalCheckpoint(tmp_path, save_last=True, save_top_k=0))
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=2, max_steps=max_steps, limit_val_batches=0, logger=False,
        callbacks=callbacks, deterministic=True, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
    )  # fmt: skip
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, trainer


def inspect_run(run_folder: Path, *flags: str) -> list[dict] | dict:
    """The records (or, with ``--summary``, the summary object) of an offline run folder."""
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(run_folder)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if result.returncode != 0 and ("No such option" in result.stderr or "No such command" in result.stderr):
        pytest.skip("this wandb has no `wandb leet inspect --json` (0.31+)")
    assert result.returncode == 0, result.stderr
    if "--summary" in flags:
        return json.loads(result.stdout)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def history(run_folder: Path) -> list[dict]:
    """Each logged row: flattened keys ("samples._type", "val/bleu4", …) to values."""
    return [r["history"]["item"] for r in inspect_run(run_folder) if r.get("type") == "history"]
