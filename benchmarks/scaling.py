"""How does the cost of a training batch grow with resolution and batch size?

Times the plain training loop (``benchmarks/plain_loop.py``, the same work as ``M2GAN``) on the
default config's networks at resolutions 32–256 (batch 32) and batch sizes 8–128 (resolution 32).
Each point runs ``--warmup`` batches, then times one batch with the gradient penalty and
``--plain-batches`` without, weighted 1 : ``gp_interval`` - 1 as a lazy-penalty cycle is in training
(a whole 16-batch cycle per point would take three times as long). Prints seconds per batch, FLOPs
per batch (``FlopCounterMode``), and the cost per pixel·image relative to the 32², batch 32
point: about 1.0 means linear growth; larger points above 1.25 are flagged as super-linear
(smaller points cost more per pixel·image when fixed per-step overheads dominate).

Channel widths follow the config: more resolution means more stages (the generator doubles its
side per stage), so FLOPs per pixel grow slowly with resolution; the FLOP column shows by how much.

    python benchmarks/scaling.py           # 6 batches per point, ~5 min on 2 cores
    python benchmarks/scaling.py --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from plain_loop import (  # benchmarks/plain_loop.py
    PlainStep,
    default_parts,
    flops_per_batch,
    lazy_cycle_mean,
    take_batches,
)


def time_point(resolution: int, batch_size: int, warmup: int, plain_batches: int) -> tuple[float, float]:
    """(seconds per batch, FLOPs per batch) at this resolution and batch size, over a penalty cycle."""
    datamodule, make_model = default_parts(data={"resolution": resolution, "batch_size": batch_size})
    model = make_model(0).train()
    batches = take_batches(datamodule, warmup + 1 + plain_batches)
    step = PlainStep(model)
    torch.manual_seed(1)
    for batch in batches[:warmup]:  # a fresh model's first batch carries the penalty: both paths warm up
        step(batch)
    seconds = []
    for k, batch in enumerate(batches[warmup:]):
        start = time.perf_counter()
        step(batch, penalty=k == 0)
        seconds.append(time.perf_counter() - start)
    per_batch = lazy_cycle_mean(model, seconds[0], statistics.median(seconds[1:]))
    return per_batch, flops_per_batch(make_model(0).train(), batches[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--plain-batches", type=int, default=3, help="timed batches without the penalty per point")
    parser.add_argument("--quick", action="store_true", help="batches 4 and 8 at 32 pixels only: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.resolutions, args.batch_sizes, args.warmup, args.plain_batches = [], [4, 8], 1, 1
    if args.plain_batches < 1:
        parser.error("--plain-batches must be at least 1")
    points = sorted({(r, 32) for r in args.resolutions} | {(32, b) for b in args.batch_sizes})
    results = {point: time_point(*point, args.warmup, args.plain_batches) for point in points}

    reference = results.get((32, 32)) or results[points[0]]
    reference_point = (32, 32) if (32, 32) in results else points[0]
    per_unit = reference[0] / (reference_point[0] ** 2 * reference_point[1])
    print(f"\nscaling: {torch.get_num_threads()} threads, {os.cpu_count()} cores, default networks, "
          f"one penalty batch and the median of {args.plain_batches} plain ones after {args.warmup} warm-up "
          f"batches, weighted over the lazy-penalty cycle")  # fmt: skip
    print(f"{'resolution':>10} {'batch':>6} {'s/batch':>9} {'GFLOP/batch':>12} {'GFLOP/s':>8} {'cost/pixel·image':>17}")
    for (resolution, batch_size), (seconds, flops) in results.items():
        relative = seconds / (resolution**2 * batch_size) / per_unit
        larger = resolution**2 * batch_size > reference_point[0] ** 2 * reference_point[1]
        flag = "  super-linear" if larger and relative > 1.25 else ""
        print(f"{resolution:>10} {batch_size:>6} {seconds:9.3f} {flops / 1e9:12.2f} {flops / seconds / 1e9:8.1f} "
              f"{relative:16.2f}x{flag}")  # fmt: skip


if __name__ == "__main__":
    main()
