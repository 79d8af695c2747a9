"""What does the framework cost? Lightning + M2GAN against a plain PyTorch loop on the same work.

Trains the default model for ``--batches`` batches twice per round in this process, from the same
seed and the same (preloaded) batches: once through ``M2GAN`` and a Lightning ``Trainer`` (manual
optimisation, logging at the default interval, the divergence guard, a progress bar), once with the
plain loop of ``benchmarks/plain_loop.py``. Rounds alternate the two paths so machine noise hits
both. Prints the median batch time of each after warm-up, the throughput ratio (target: Lightning
≥ 0.95× the plain loop) and whether both ended with identical weights (proof of the same work).

    python benchmarks/overhead.py              # 100 batches × 2 rounds, about 2 minutes
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


class BatchClock(pl.Callback):
    """Seconds from one training batch's start to the next one's: everything the loop does per batch."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())

    @property
    def times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


class Replay:
    """Preloaded batches as one iterable (a bare list would be read as a list of data loaders)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def lightning_run(make_model, batches: list[dict], seed: int, logdir: str) -> tuple[torch.nn.Module, list[float]]:
    """Train through the Trainer; return the model and its per-batch times."""
    model = make_model(seed)
    clock = BatchClock()
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
        callbacks=[clock],
    )
    torch.manual_seed(seed + 1)  # the training draws (noise, negatives) start from here in both paths
    trainer.fit(model, train_dataloaders=Replay(batches))
    return model, clock.times


def plain_run(make_model, batches: list[dict], seed: int) -> tuple[torch.nn.Module, list[float]]:
    """Train with the plain loop; return the model and its per-batch times."""
    model = make_model(seed).train()
    step = PlainStep(model)
    torch.manual_seed(seed + 1)
    times = []
    for batch in batches:
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    return model, times


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when every parameter and buffer of ``a`` equals ``b``'s exactly."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10, help="batches left out of the medians")
    parser.add_argument("--rounds", type=int, default=2, help="alternating (Lightning, plain) pairs")
    parser.add_argument("--quick", action="store_true", help="a few batches, one round: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.warmup, args.rounds = 6, 2, 1
    seed = 0
    datamodule, make_model = default_parts()
    batches = take_batches(datamodule, args.batches)
    lightning_times, plain_times, identical = [], [], []
    with tempfile.TemporaryDirectory() as logdir:
        for _ in range(args.rounds):
            lit_model, times = lightning_run(make_model, batches, seed, logdir)
            lightning_times += times[args.warmup :]
            plain_model, times = plain_run(make_model, batches, seed)
            plain_times += times[args.warmup :]
            identical.append(same_weights(lit_model, plain_model))

    lit, plain = statistics.median(lightning_times), statistics.median(plain_times)
    print(f"\noverhead: {torch.get_num_threads()} threads, {os.cpu_count()} cores, default config, "
          f"{args.batches} batches × {args.rounds} rounds, medians after {args.warmup} warm-up batches")  # fmt: skip
    print(f"plain PyTorch loop:        {plain * 1000:7.1f} ms/batch")
    print(f"Lightning + M2GAN:         {lit * 1000:7.1f} ms/batch")
    print(f"throughput ratio Lightning / plain: {plain / lit:.3f}x (target >= 0.95x)")
    print(f"identical weights after {args.batches} batches: {all(identical)}")


if __name__ == "__main__":
    main()
