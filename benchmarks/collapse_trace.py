"""Why does a generator go black on dark data? Trace a run's output layer, critic and alarm batch by batch.

Writes the shapes data on a black background as a COCO-format dataset at 64 px (``quality_shapes.write_coco``),
then trains ``configs/sizes/cpu-64px.yaml`` on it through the COCO loader for ``--batches`` batches
for each ``--variant`` and seed, one run after the other. Every ``--every`` batches it records:

* the generator's last layer before any squashing (``to_rgb``'s output on the batch): mean, spread,
  and the share of values beyond ±2.65, where ``tanh`` passes under 2% of the gradient;
* the gradient norm of that layer's weights at the latest generator step;
* the discriminator's mean logits on real and generated images (``train/real_logit``, ``train/fake_logit``);
* ``callbacks.CollapseAlarm``'s figures (``collapse/detail``, ``collapse/spread``: the EMA
  generator's images against the real ones; under 0.1 is a collapse).

It prints the trace of each run and a summary: the batch of the first alarm (or none) and the
final EMA images' figures. Exits 1 if a run's alarm never reported (a broken trace). The trace is
itself a ``CollapseAlarm`` at the trace interval, beside the config's own (every 500 batches): at
those batches both check, and an alarm line may print twice.

    python benchmarks/collapse_trace.py --variant tanh=--model.generator_output=tanh --variant linear= --seeds 0 1
    python benchmarks/collapse_trace.py --quick
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from quality_shapes import write_coco

from callbacks.collapse import CollapseAlarm
from m2gan.cli import main as cli_main
from train import NAMED_CALLBACKS

ROOT = Path(__file__).resolve().parent.parent
SATURATED = 2.65  # |x| beyond which tanh'(x) = 1 - tanh(x)^2 < 0.02


class OutputTrace(CollapseAlarm):
    """The collapse alarm's check every ``every`` batches, with the generator's pre-output statistics
    and its output-layer gradient norm."""

    def __init__(self, every: int = 25) -> None:
        super().__init__(every_n_batches=every)
        self.every, self.latest = every, None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)

        def keep(module, inputs, output):
            self.latest = output.detach()

        pl_module.generator.to_rgb.register_forward_hook(keep)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        batch_number = pl_module.batches_trained
        if batch_number % self.every or self.latest is None:
            return
        grad = pl_module.generator.to_rgb.weight.grad
        metrics = {
            "trace/pre_mean": self.latest.mean().item(),
            "trace/pre_std": self.latest.std().item(),
            "trace/saturated": (self.latest.abs() > SATURATED).float().mean().item(),
            "trace/rgb_grad_norm": grad.norm().item() if grad is not None else float("nan"),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=batch_number)


def read_metrics(folder: Path) -> dict[int, dict[str, float]]:
    """The CSV logger's rows, merged by step."""
    (path,) = folder.glob("**/metrics.csv")
    rows: dict[int, dict[str, float]] = {}
    with open(path) as file:
        for row in csv.DictReader(file):
            step = int(float(row["step"]))
            values = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"}
            rows.setdefault(step, {}).update(values)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=1000, help="training batches per run")
    parser.add_argument("--train-images", type=int, default=12000, help="COCO-format training images")
    parser.add_argument("--two-object-prob", type=float, default=0.5, help="share of two-object scenes")
    parser.add_argument("--every", type=int, default=50, help="trace interval in batches (also the alarm's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS", help="extra train.py arguments")
    parser.add_argument("--out", default=None, help="keep the data and runs here")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny data, a few batches")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.train_images, args.every = 4, 64, 2
    variants = [v.partition("=") for v in args.variant] or [("default", "=", "")]
    os.environ.setdefault("WANDB_MODE", "offline")
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    summaries = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        coco = out / "coco-black"
        if not coco.exists():
            write_coco(coco, {"train": args.train_images, "val": 200 if args.quick else 1000}, 64, [], "black",
                       args.two_object_prob)  # fmt: skip
        for name, _, extra in variants:
            for seed in args.seeds:
                workdir = out / f"{name}-seed{seed}"
                start = time.perf_counter()
                cli_main(
                    str(ROOT / "configs" / "default.yaml"),
                    [
                        "fit",
                        f"--config={ROOT / 'configs' / 'sizes' / 'cpu-64px.yaml'}",
                        f"--config={ROOT / 'configs' / 'data' / 'coco.yaml'}",
                        f"--data.root={coco}",
                        "--data.augment=false",
                        f"--seed_everything={seed}",
                        "--trainer.max_time=null",
                        f"--trainer.max_steps={2 * args.batches}",
                        "--trainer.enable_progress_bar=false",
                        "--trainer.logger=CSVLogger",
                        f"--trainer.logger.save_dir={workdir}",
                        f"--trainer.log_every_n_steps={args.every}",
                        "--trainer.callbacks+=collapse_trace.OutputTrace",
                        f"--trainer.callbacks.every={args.every}",
                        *shlex.split(extra),
                    ]
                    # A smoke run skips validation, and with it the R-precision evaluator's training.
                    + (["--data.batch_size=4", "--trainer.limit_val_batches=0"] if args.quick else []),
                    named_callbacks=NAMED_CALLBACKS,
                )
                rows = read_metrics(workdir)
                minutes = (time.perf_counter() - start) / 60
                print(f"\n{name}, seed {seed}: {args.batches} batches in {minutes:.1f} min")
                print(f"{'batch':>6} {'pre mean':>9} {'pre std':>8} {'sat.':>6} {'rgb grad':>9} {'D real':>7} "
                      f"{'D fake':>7} {'detail':>7} {'spread':>7}")  # fmt: skip
                first_alarm = None
                for step in sorted(rows):
                    row = rows[step]
                    if row.get("collapse/alarm") == 1.0 and first_alarm is None:
                        first_alarm = step
                    if "trace/pre_mean" not in row:
                        continue
                    other = {k: row.get(k, float("nan")) for k in
                             ("train/real_logit", "train/fake_logit", "collapse/detail", "collapse/spread")}  # fmt: skip
                    print(f"{step:>6} {row['trace/pre_mean']:>9.3f} {row['trace/pre_std']:>8.3f} "
                          f"{row['trace/saturated']:>6.1%} {row['trace/rgb_grad_norm']:>9.2e} "
                          f"{other['train/real_logit']:>7.2f} {other['train/fake_logit']:>7.2f} "
                          f"{other['collapse/detail']:>7.3f} {other['collapse/spread']:>7.3f}")  # fmt: skip
                checks = [rows[s] for s in sorted(rows) if "collapse/alarm" in rows[s]]
                summaries.append((name, seed, first_alarm, checks[-1] if checks else None))

    print(f"\ncollapse_trace: {torch.get_num_threads()} threads, {os.cpu_count()} cores, black background, 64 px, "
          f"{args.batches} batches per run")  # fmt: skip
    print(f"{'variant':<10} {'seed':>4} {'first alarm':>12} {'final detail':>13} {'final spread':>13}")
    broken = False
    for name, seed, first_alarm, last in summaries:
        if last is None:
            broken = True
            print(f"{name:<10} {seed:>4} {'no check ran':>12}")
            continue
        alarm = f"batch {first_alarm}" if first_alarm is not None else "none"
        print(f"{name:<10} {seed:>4} {alarm:>12} {last['collapse/detail']:>13.3f} {last['collapse/spread']:>13.3f}")
    print(f"collapsed at the end: {sum(last is not None and last['collapse/alarm'] == 1.0 for *_, last in summaries)} "
          f"of {len(summaries)} runs")  # fmt: skip
    if broken:
        sys.exit("collapse_trace: a run recorded no collapse check; the trace is broken")


if __name__ == "__main__":
    main()
