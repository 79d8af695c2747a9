"""How does the cost of a training batch grow with resolution and batch size?

Times the plain training loop (``benchmarks/plain_loop.py``, the same work as ``M2GAN``) on the
default config's networks at resolutions 32–256 (batch 32) and batch sizes 8–128 (resolution 32).
Each point runs ``--warmup`` batches, then the mean of one lazy-penalty cycle (``gp_interval``
batches, so the penalty is counted once per cycle, as in training). Prints seconds per batch,
FLOPs per batch (``FlopCounterMode``), and the cost per pixel·image relative to the 32², batch 32
point: about 1.0 means linear growth; larger points above 1.25 are flagged as super-linear
(smaller points cost more per pixel·image when fixed per-step overheads dominate).

Channel widths follow the config: more resolution means more stages (the generator doubles its
side per stage), so FLOPs per pixel grow slowly with resolution; the FLOP column shows by how much.

    python benchmarks/scaling.py           # one 16-batch penalty cycle per point: ~15 min on 2 cores (estimated)
    python benchmarks/scaling.py --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from plain_loop import PlainStep, default_parts, flops_per_batch, take_batches  # benchmarks/plain_loop.py


def time_point(resolution: int, batch_size: int, warmup: int) -> tuple[float, float]:
    """(seconds per batch, FLOPs per batch) at this resolution and batch size, over a penalty cycle."""
    datamodule, make_model = default_parts(data={"resolution": resolution, "batch_size": batch_size})
    model = make_model(0).train()
    cycle = model.hparams.gp_interval
    batches = take_batches(datamodule, warmup + cycle)
    step = PlainStep(model)
    torch.manual_seed(1)
    for batch in batches[:warmup]:
        step(batch)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    seconds = (time.perf_counter() - start) / cycle
    return seconds, flops_per_batch(make_model(0).train(), batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="batches 4 and 8 at 32 pixels only: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.resolutions, args.batch_sizes, args.warmup = [], [4, 8], 1
    points = sorted({(r, 32) for r in args.resolutions} | {(32, b) for b in args.batch_sizes})
    results = {point: time_point(*point, args.warmup) for point in points}

    reference = results.get((32, 32)) or results[points[0]]
    reference_point = (32, 32) if (32, 32) in results else points[0]
    per_unit = reference[0] / (reference_point[0] ** 2 * reference_point[1])
    print(f"\nscaling: {torch.get_num_threads()} threads, {os.cpu_count()} cores, default networks, "
          f"mean of one lazy-penalty cycle after {args.warmup} warm-up batches")  # fmt: skip
    print(f"{'resolution':>10} {'batch':>6} {'s/batch':>9} {'GFLOP/batch':>12} {'GFLOP/s':>8} {'cost/pixel·image':>17}")
    for (resolution, batch_size), (seconds, flops) in results.items():
        relative = seconds / (resolution**2 * batch_size) / per_unit
        larger = resolution**2 * batch_size > reference_point[0] ** 2 * reference_point[1]
        flag = "  super-linear" if larger and relative > 1.25 else ""
        print(f"{resolution:>10} {batch_size:>6} {seconds:9.3f} {flops / 1e9:12.2f} {flops / seconds / 1e9:8.1f} "
              f"{relative:16.2f}x{flag}")  # fmt: skip


if __name__ == "__main__":
    main()
