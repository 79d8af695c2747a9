"""Timing helpers shared by the benchmarks: machine noise hits every variant alike."""

from __future__ import annotations

import statistics
import time

import pytorch_lightning as pl


def interleaved_medians(functions, repeats: int, warmup: bool = True) -> list[tuple[float, object]]:
    """(median seconds, last result) of each callable, timed in turn within every repeat."""
    if warmup:
        for fn in functions:
            fn()
    times: list[list[float]] = [[] for _ in functions]
    results: list[object] = [None] * len(functions)
    for _ in range(repeats):
        for k, fn in enumerate(functions):
            start = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - start)
    return [(statistics.median(bucket), result) for bucket, result in zip(times, results)]


class BatchTimer(pl.Callback):
    """Wall time of every training batch (D + G steps and what Lightning does around them)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)
