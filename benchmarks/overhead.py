"""What does the framework cost? Lightning + M2GAN against a plain PyTorch loop on the same work.

Trains the default model for ``--batches`` batches twice in this process, from the same seed and
the same (preloaded) batches: once through ``M2GAN`` and a Lightning ``Trainer`` (manual
optimisation, logging at the default interval, the divergence guard, a progress bar), once with
the plain loop of ``benchmarks/plain_loop.py``. The two advance in lockstep: after each Lightning
batch, a callback runs the plain loop's step on the same batch (with its own random stream), so a
slow moment of this noisy machine hits both alike. Prints the median batch time of each after
warm-up, the throughput ratio (target: Lightning ≥ 0.95× the plain loop) and whether both ended
with identical weights (proof of the same work); exits non-zero when they differ.

    python benchmarks/overhead.py              # 200 batches, about 2 minutes
    python benchmarks/overhead.py --quick      # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import pytorch_lightning as pl
import torch
from plain_loop import PlainStep, default_parts, take_batches  # benchmarks/plain_loop.py
from pytorch_lightning.loggers import CSVLogger


class Lockstep(pl.Callback):
    """Times every Lightning batch, and runs one plain-loop step on the same batch after it.

    Lightning's time for a batch is from its start to the next batch's start, less the plain step
    run in between. The plain loop keeps its own torch random state, so both paths draw the
    same noise and negatives as they would alone.
    """

    def __init__(self, plain_step: PlainStep, seed: int) -> None:
        self.plain_step = plain_step
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.plain_rng = torch.get_rng_state()
        self.starts: list[float] = []
        self.plain_times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with torch.random.fork_rng(devices=[]):  # the Lightning path's random state is restored after
            torch.set_rng_state(self.plain_rng)
            start = time.perf_counter()
            self.plain_step(batch)
            self.plain_times.append(time.perf_counter() - start)
            self.plain_rng = torch.get_rng_state()

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())

    @property
    def lightning_times(self) -> list[float]:
        spans = [b - a for a, b in zip(self.starts, self.starts[1:])]
        return [span - plain for span, plain in zip(spans, self.plain_times)]


class Replay:
    """Preloaded batches as one iterable (a bare list would be read as a list of data loaders)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when every parameter and buffer of ``a`` equals ``b``'s exactly."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10, help="batches left out of the medians")
    parser.add_argument("--quick", action="store_true", help="a few batches: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.warmup = 6, 2
    seed = 0
    datamodule, make_model = default_parts()
    batches = take_batches(datamodule, args.batches)
    plain_model = make_model(seed).train()
    lockstep = Lockstep(PlainStep(plain_model), seed=seed + 1)
    lightning_model = make_model(seed)
    with tempfile.TemporaryDirectory() as logdir:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            logger=CSVLogger(logdir),
            log_every_n_steps=50,  # the default config's
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=True,
            limit_val_batches=0,
            callbacks=[lockstep],
        )
        torch.manual_seed(seed + 1)  # the Lightning path's training draws start where the plain loop's do
        trainer.fit(lightning_model, train_dataloaders=Replay(batches))

    lit = statistics.median(lockstep.lightning_times[args.warmup :])
    plain = statistics.median(lockstep.plain_times[args.warmup :])
    print(f"\noverhead: {torch.get_num_threads()} threads, {os.cpu_count()} cores, default config, "
          f"{args.batches} batches in lockstep, medians after {args.warmup} warm-up batches")  # fmt: skip
    print(f"plain PyTorch loop:        {plain * 1000:7.1f} ms/batch")
    print(f"Lightning + M2GAN:         {lit * 1000:7.1f} ms/batch")
    print(f"throughput ratio Lightning / plain: {plain / lit:.3f}x (target >= 0.95x)")
    identical = same_weights(lightning_model, plain_model)
    print(f"identical weights after {args.batches} batches: {identical}")
    if not identical:
        raise SystemExit("overhead: the two paths did different work (their weights differ): the ratio means nothing")


if __name__ == "__main__":
    main()
