"""How much of the machine does a training step use, and which CPU speed-ups pay?

1. FLOPs of one training batch of the default config (D step, G + captioner step, averaged over a
   lazy-penalty cycle), counted by ``torch.utils.flop_counter.FlopCounterMode``.
2. This machine's dense matmul throughput (fp32 and bf16 ``N×N`` matmuls), measured in this run.
3. Batch time of the plain training loop (``benchmarks/plain_loop.py``, the same work as
   ``M2GAN``) for each variant, stepped in turn on the same batches so noise hits all alike: the
   medians of penalty and plain batches, weighted over the lazy-penalty cycle as the FLOPs are;
   baseline fp32 (contiguous weights); ``channels_last`` weights (``model.channels_last``, the
   default since this benchmark measured it); fused Adam; bf16 autocast; ``torch.compile`` (``--compile``,
   slow to warm up). Prints each variant's speed-up over the baseline and its model-FLOP
   utilisation (achieved FLOP/s over the fp32 matmul peak).
4. With ``--binding``, what the binding options cost on top of the default (channels-last) model:
   the generator's word attention at 8×8 and 16×16 (``model.word_attention_sides``), and that
   plus the word-region matching loss (``model.word_region_weight``); each with its own FLOPs.

    python benchmarks/efficiency.py              # 60 timed batches per variant, about a minute
    python benchmarks/efficiency.py --compile    # also torch.compile (minutes of compilation)
    python benchmarks/efficiency.py --binding    # also the word-attention and word-region options
    python benchmarks/efficiency.py --quick      # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
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
from timing import interleaved_medians  # benchmarks/timing.py


def matmul_flops_per_second(size: int, dtype: torch.dtype, repeats: int) -> float:
    """Dense ``size × size`` matmul throughput in FLOP/s (median of ``repeats``)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    ((seconds, _),) = interleaved_medians([lambda: a @ b], repeats)
    return 2 * size**3 / seconds


class Variant:
    """One way of running the plain training step: a model, its step, and how each batch is fed."""

    def __init__(
        self, name: str, make_model, channels_last=False, fused=False, autocast=None, compile=False, **model_args
    ):
        self.name, self.times = name, []
        model = make_model(0, channels_last=channels_last, **model_args).train()
        self.model_args = model_args  # a model of other sizes or losses does other FLOPs
        if compile:
            for attribute in ("generator", "discriminator", "captioner", "text_encoder"):
                setattr(model, attribute, torch.compile(getattr(model, attribute)))
        self.step = PlainStep(model)
        if fused:
            self.step.opt_g, self.step.opt_d = (
                type(opt)(opt.param_groups, fused=True) for opt in (self.step.opt_g, self.step.opt_d)
            )
        self.autocast = autocast

    def __call__(self, batch: dict, penalty: bool | None = None) -> None:
        context = torch.autocast("cpu", dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        start = time.perf_counter()
        with context:
            self.step(batch, penalty)
        self.times.append((penalty, time.perf_counter() - start))

    def seconds_per_batch(self) -> float:
        """Medians of the timed penalty and plain batches, weighted over a lazy-penalty cycle."""
        penalty, plain = ([t for p, t in self.times if p is kind] for kind in (True, False))
        return lazy_cycle_mean(self.step.model, statistics.median(penalty), statistics.median(plain))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=60, help="timed batches per variant")
    parser.add_argument("--warmup", type=int, default=8, help="untimed batches per variant first")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow warm-up)")
    parser.add_argument("--binding", action="store_true", help="also time the word-attention and word-region options")
    parser.add_argument("--quick", action="store_true", help="a few batches: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.warmup = 2, 1
    datamodule, make_model = default_parts()
    batches = take_batches(datamodule, args.warmup + args.batches)

    side, repeats = (256, 2) if args.quick else (1024, 20)
    fp32_peak = matmul_flops_per_second(side, torch.float32, repeats)
    bf16_peak = matmul_flops_per_second(side, torch.bfloat16, repeats)
    flops = flops_per_batch(make_model(0, channels_last=False).train(), batches[0])

    variants = [
        Variant("baseline (fp32)", make_model),
        Variant("channels_last", make_model, channels_last=True),
        Variant("fused Adam", make_model, fused=True),
        Variant("bf16 autocast", make_model, autocast=torch.bfloat16),
    ]
    if args.compile:
        variants.append(Variant("torch.compile", make_model, compile=True))
    if args.binding:
        attention = {"channels_last": True, "word_attention_sides": (8, 16)}
        variants.append(Variant("+ word attention", make_model, **attention))
        variants.append(Variant("+ word-region", make_model, **attention, word_region_weight=1.0))
    torch.manual_seed(1)
    for batch in batches[: args.warmup]:
        for variant in variants:
            variant(batch)
    for variant in variants:
        variant.times.clear()
    interval = variants[0].step.model.settings.objective.gp_interval
    for k, batch in enumerate(batches[args.warmup :]):  # in turn, so a slow moment hits every variant
        for variant in variants:
            variant(batch, penalty=k % interval == 0)  # the lazy cycle, with a penalty batch first

    print(f"\nefficiency: {torch.get_num_threads()} threads, {os.cpu_count()} cores, default config, "
          f"{args.batches} timed batches per variant after {args.warmup}")  # fmt: skip
    print(f"matmul peak ({side}², measured): fp32 {fp32_peak / 1e9:.1f} GFLOP/s, bf16 {bf16_peak / 1e9:.1f} GFLOP/s")
    print(f"FLOPs per training batch (D + G + captioner, penalty averaged): {flops / 1e9:.2f} GFLOP")
    baseline = variants[0].seconds_per_batch()
    print(f"{'variant':<18} {'ms/batch':>9} {'speed-up':>9} {'GFLOP/s':>8} {'MFU (fp32 peak)':>16}")
    for variant in variants:
        seconds = variant.seconds_per_batch()
        achieved = (flops_per_batch(variant.step.model, batches[0]) if variant.model_args else flops) / seconds
        print(f"{variant.name:<18} {seconds * 1000:9.1f} {baseline / seconds:8.2f}x {achieved / 1e9:8.2f} "
              f"{achieved / fp32_peak:15.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
