"""What does the DDP strategy cost per training step on this machine?

Runs ``train.py fit`` on the default config for ``--batches`` batches (no validation) three ways,
each in its own process tree, and times every training batch on rank 0 (:class:`StepClock`).
``data.batch_size`` is the global batch, here 32 (the default config's is 16), split between DDP's
processes:

1. one process, all cores (``torch``'s default threads), batch 32 — a single-process run;
2. ``ddp_find_unused_parameters_true`` with 2 CPU processes (gloo), 16 images each, which
   Lightning gives ``cores/2`` threads each;
3. one process with ``OMP_NUM_THREADS=cores/2`` and batch 16 — exactly one DDP rank's work and
   threads, without the strategy.

Step time of (2) over (3) is the strategy's own cost: the gradient all-reduce, the search for
unused parameters, two processes sharing the memory system. (1) over (2) is what DDP gives on
this machine for the same global batch. Medians after ``--warmup`` batches.

    python benchmarks/ddp_cost.py             # 120 batches per run, ~4 minutes on 2 cores
    python benchmarks/ddp_cost.py --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parent.parent
DDP = ["--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.devices=2", "--trainer.accelerator=cpu"]
RUN = """
import sys
sys.path.insert(0, {benchmarks!r})
from train import run
run()
"""


class StepClock(pl.Callback):
    """Rank 0 writes the wall time of every training batch (start to start) to ``path`` as JSON."""

    def __init__(self, path: str) -> None:
        self.path, self.starts = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())
        if trainer.is_global_zero:
            times = [b - a for a, b in zip(self.starts, self.starts[1:])]
            Path(self.path).write_text(json.dumps({"times": times}))


def run(name: str, extra: list[str], env: dict, batches: int, workdir: str) -> dict:
    """Train ``batches`` batches with ``extra`` arguments; return rank 0's batch times."""
    out = os.path.join(workdir, f"{name}.json")
    # A script file, not ``python -c``: Lightning's DDP launcher starts the other ranks by re-running argv.
    script = Path(workdir) / "run_train.py"
    script.write_text(RUN.format(benchmarks=str(ROOT / "benchmarks")))
    command = [
        sys.executable, str(script),
        "fit", f"--trainer.max_steps={2 * batches}", "--trainer.limit_val_batches=0", "--data.batch_size=32",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=ddp_cost.StepClock", f"--trainer.callbacks.path={out}", *extra,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=workdir, env={**os.environ, **env}, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="the DDP run only, a few batches: a smoke run")
    args = parser.parse_args()
    smoke = []
    if args.quick:  # no W&B run and a smaller tokenizer fit: start-up is what a smoke run waits for
        args.batches, args.warmup = 6, 2
        smoke = ["--trainer.logger=false", "--data.tokenizer_fit_size=300"]
    cores = os.cpu_count() or 2
    half = str(max(1, cores // 2))
    with tempfile.TemporaryDirectory() as workdir:
        runs = {"DDP, 2 processes x 16": run("ddp", DDP + smoke, {}, args.batches, workdir)}
        if not args.quick:  # the smoke run exercises the DDP launch only; process start-up dominates it
            runs["one process, batch 32"] = run("single", [], {}, args.batches, workdir)
            runs[f"one process, batch 16, {half} thread(s)"] = run(
                "rank_alone", ["--data.batch_size=16"], {"OMP_NUM_THREADS": half}, args.batches, workdir
            )
    medians = {name: statistics.median(r["times"][args.warmup :]) for name, r in runs.items()}
    print(f"\nddp_cost: {cores} cores, default config, global batch 32, {args.batches} batches per run, "
          f"medians after {args.warmup}")  # fmt: skip
    for name, seconds in medians.items():
        print(f"{name:<34} {seconds * 1000:8.1f} ms/step")
    if args.quick:
        return
    ddp, single, rank_alone = medians.values()
    print(f"DDP step / one rank's work alone: {ddp / rank_alone:.2f}x (the strategy's cost per step)")
    print(f"DDP throughput / one process, same global batch: {single / ddp:.2f}x")


if __name__ == "__main__":
    main()
