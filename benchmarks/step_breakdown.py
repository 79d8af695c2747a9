"""Where does the default job's time go? A profile of the real ``train.py fit`` run, by phase.

Runs ``configs/default.yaml`` through the CLI (the whole default job unless ``--batches`` or
``--quick`` shortens it) with one extra callback, :class:`PhaseClock`, that wraps the model's
public steps and the trainer's checkpoint writer in timers. Prints each phase's share of the wall
time from the start of ``fit`` to its end:

* data loading: the dataset's ``__getitem__`` and the collate function (in-process, 0 workers);
* discriminator step without the gradient penalty, and the penalty itself (the extra time of
  ``d_step`` on penalty batches over the others, times their number);
* generator + captioner step; EMA update;
* validation with the evaluation callbacks (FID, attribute accuracy, BLEU), sample grids,
  checkpoint writes;
* setup before the first batch, and the rest: Lightning's loop, ``self.log``, the progress bar.

    python benchmarks/step_breakdown.py               # the whole default job (~10 minutes)
    python benchmarks/step_breakdown.py --batches 400 # a shorter profile
    python benchmarks/step_breakdown.py --quick       # a smoke run
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from train import cli as train_cli

ROOT = Path(__file__).resolve().parent.parent


def timed(function, bucket: list[float]):
    """``function`` that appends the wall seconds of each call to ``bucket``."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - start)

    return wrapper


class PhaseClock(pl.Callback):
    """Times the phases of a fit by wrapping public methods of the model, data module and trainer."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.penalty_batches: list[bool] = []
        self.first_batch = self.fit_start = self.fit_end = None

    def bucket(self, name: str) -> list[float]:
        return self.times.setdefault(name, [])

    def setup(self, trainer, pl_module, stage) -> None:
        self.fit_start = time.perf_counter()
        model, data = pl_module, trainer.datamodule

        def d_step(*args, **kwargs):
            self.penalty_batches.append(model.penalty_due())
            return d_step_timed(*args, **kwargs)

        d_step_timed = timed(model.d_step, self.bucket("d_step"))
        model.d_step = d_step
        model.g_step = timed(model.g_step, self.bucket("g_step"))
        model.update_ema = timed(model.update_ema, self.bucket("ema"))
        # The training loader is built after setup and binds data.collate then, so this wrap counts.
        collate, collate_timed = data.collate, timed(data.collate, self.bucket("collate"))
        data.collate = lambda samples, split="train": (collate_timed if split == "train" else collate)(samples, split)
        dataset = data.datasets["train"]
        dataset.__class__ = type(f"Timed{type(dataset).__name__}", (type(dataset),), {})
        dataset.__class__.__getitem__ = timed(type(dataset).__getitem__, self.bucket("getitem"))
        trainer.save_checkpoint = timed(trainer.save_checkpoint, self.bucket("checkpoint"))
        for callback in trainer.callbacks:
            if callback is not self and type(callback).__name__ == "SampleGrid":
                callback.on_train_batch_end = timed(callback.on_train_batch_end, self.bucket("sample_grid"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_batch is None:
            self.first_batch = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.bucket("validation").append(time.perf_counter() - self._validation_start)

    def teardown(self, trainer, pl_module, stage) -> None:
        self.fit_end = time.perf_counter()

    def shares(self) -> dict[str, float]:
        """Seconds per phase; they add up to the fit's wall time."""
        total = self.fit_end - self.fit_start
        d_times = self.bucket("d_step")
        with_penalty = [t for t, p in zip(d_times, self.penalty_batches) if p]
        without = [t for t, p in zip(d_times, self.penalty_batches) if not p]
        penalty = 0.0
        if with_penalty and without:
            penalty = max(0.0, statistics.median(with_penalty) - statistics.median(without)) * len(with_penalty)
        phases = {
            "data loading (getitem + collate)": sum(self.bucket("getitem")) + sum(self.bucket("collate")),
            "discriminator step (no penalty)": sum(d_times) - penalty,
            "gradient penalty (R1, lazy)": penalty,
            "generator + captioner step": sum(self.bucket("g_step")),
            "EMA update": sum(self.bucket("ema")),
            "validation + FID/attribute/BLEU": sum(self.bucket("validation")),
            "sample grids": sum(self.bucket("sample_grid")),
            "checkpoint writes": sum(self.bucket("checkpoint")),
            "setup before the first batch": (self.first_batch or self.fit_end) - self.fit_start,
        }
        phases["Lightning loop, logging, progress bar"] = total - sum(phases.values())
        return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=None, help="stop after this many batches (default: the job)")
    parser.add_argument("--quick", action="store_true", help="24 batches, no validation: a smoke run")
    parser.add_argument("overrides", nargs="*", help="extra train.py fit arguments, after --")
    args = parser.parse_args()
    overrides = list(args.overrides)
    if args.quick:
        args.batches = 24
        overrides.append("--trainer.limit_val_batches=0")
    if args.batches:
        overrides.append(f"--trainer.max_steps={2 * args.batches}")  # two optimizer steps per batch
    os.environ.setdefault("WANDB_MODE", "offline")
    with tempfile.TemporaryDirectory() as tmp:
        cli = train_cli(
            ["fit", f"--trainer.logger.init_args.save_dir={tmp}", "--trainer.callbacks+=step_breakdown.PhaseClock",
             *overrides],
        )  # fmt: skip
    clock = next(c for c in cli.trainer.callbacks if type(c).__name__ == "PhaseClock")
    phases = clock.shares()
    total = sum(phases.values())
    batches = len(clock.bucket("d_step"))
    print(f"\nstep_breakdown: {torch.get_num_threads()} threads, {os.cpu_count()} cores, default config, "
          f"{batches} batches, {len(clock.bucket('validation'))} validations, {total:.0f} s")  # fmt: skip
    for name, seconds in phases.items():
        print(f"{name:<40} {seconds:8.1f} s  {seconds / total:6.1%}  {1000 * seconds / batches:7.1f} ms/batch")


if __name__ == "__main__":
    main()
