"""What does an FID evaluation cost? Against training time, and against a bare torch-fidelity call.

For the default config (model, data and its ``callbacks.FID``: the shapes judge, 2,000 images):

1. Training: median wall time of a training batch (D + G step) after warm-up, times the default
   validation interval (``trainer.val_check_interval`` batches): the training time one
   evaluation is spread over.
2. The callback: wall time of one ``FID.evaluate`` (draw 2,000 images with the EMA generator,
   embed them, compare with the cached real features), median of ``--repeats``.
3. Bare torch-fidelity on the same work: draw the same images with ``model.generate`` (same
   captions, same seeds) and call ``torch_fidelity.calculate_metrics`` on them with the real
   set's statistics cached by torch-fidelity (no worker processes), median of ``--repeats``;
   the two are timed in turn within each repeat.
   Both give the same FID (printed), so they do the same work.

With ``--inception N`` the same comparison runs for Inception FID on N images, with a randomly
initialised Inception (BatchNorm recalibrated) written by this script: timing does not depend on
the weights' values, and no download happens.

    python benchmarks/fid_cost.py                  # shapes judge, 2,000 images; ~3 minutes
    python benchmarks/fid_cost.py --inception 500  # also Inception FID on 500 images
    python benchmarks/fid_cost.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch_fidelity
import yaml
from timing import BatchTimer, interleaved_medians  # benchmarks/timing.py

from callbacks import FID
from m2gan.data import CaptionDataModule
from m2gan.eval import fid
from m2gan.eval.shapes_judge import SMOKE_RECIPE, JudgeRecipe, judge_file
from m2gan.images import to_uint8
from m2gan.model import M2GAN
from m2gan.settings import overridden

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-batches", type=int, default=60, help="batches timed for the step time")
    parser.add_argument("--inception", type=int, default=0, help="also time Inception FID on this many images")
    parser.add_argument("--quick", action="store_true", help="200 images, 1 repeat, 14 training batches, a rougher judge: a smoke run")
    return parser.parse_args()


def default_config() -> dict:
    config = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    (fid_args,) = [c.get("init_args", {}) for c in config["trainer"]["callbacks"] if c["class_path"] == "callbacks.FID"]
    return {"model": config["model"], "data": config["data"], "fid": fid_args, "trainer": config["trainer"]}


def untrained_inception(path: str) -> str:
    """Write a random Inception for torch-fidelity with recalibrated BatchNorm statistics (timing only)."""
    import torch_fidelity.feature_extractor_inceptionv3 as module

    class Untrained(module.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    download, module.load_state_dict_from_url = module.load_state_dict_from_url, lambda *a, **k: {}
    try:
        model = Untrained(fid.INCEPTION, ["2048"])
    finally:
        module.load_state_dict_from_url = download
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_running_stats(), setattr(layer, "momentum", None), layer.train()
    with torch.no_grad():
        model(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8))
    torch.save(model.eval().state_dict(), path)
    return path


def compare(model, datamodule, callback: FID, repeats: int, cache: str) -> dict:
    """Time the callback's evaluation and the bare torch-fidelity path on the same images."""
    trainer = pl.Trainer(
        default_root_dir=cache, limit_val_batches=1, logger=False, callbacks=[callback], enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.validate(model, datamodule, verbose=False)  # warm-up: real features computed and cached

    dataset = datamodule.val_dataloader().dataset
    real = torch.cat([to_uint8(dataset[i]["image"][None]) for i in range(len(callback._captions))])
    n, step = callback.num_samples, callback.batch_size
    captions = [callback._captions[i % len(callback._captions)] for i in range(n)]

    def bare() -> float:
        images = torch.cat(
            [
                model.ema.generate(captions[s : s + step], seed=callback.seed + b)
                for b, s in enumerate(range(0, n, step))
            ]
        )
        metrics = torch_fidelity.calculate_metrics(
            input1=fid.ImageTensors(images), input2=fid.ImageTensors(real), input2_cache_name=f"real-{callback.extractor_name}",
            cache_root=os.path.join(cache, "fidelity"), fid=True, cuda=False, batch_size=step,
            feature_extractor=callback.extractor_name, feature_extractor_weights_path=callback.weights_file, save_cpu_ram=True,
            verbose=False,
        )  # fmt: skip
        return metrics["frechet_inception_distance"]

    bare()  # warm-up: torch-fidelity caches the real statistics
    (callback_seconds, values), (bare_seconds, bare_fid) = interleaved_medians(
        [lambda: callback.evaluate(trainer, model), bare], repeats, warmup=False
    )
    name = callback.names["fid"]
    return {"name": name, "callback": callback_seconds, "bare": bare_seconds, "fid": values[name], "bare_fid": bare_fid}


def main() -> None:
    args = parse_args()
    repeats = 1 if args.quick else args.repeats
    train_batches = 14 if args.quick else args.train_batches
    config = default_config()
    datamodule = CaptionDataModule(**config["data"])
    model = M2GAN(
        **overridden(config["model"], vocab_size=datamodule.vocab_size, max_length=datamodule.max_length,
                     resolution=config["data"]["resolution"])  # fmt: skip
    )
    model.set_tokenizer(datamodule.tokenizer)

    timer = BatchTimer()
    pl.Trainer(
        max_steps=2 * train_batches, limit_val_batches=0, logger=False, callbacks=[timer],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    ).fit(model, datamodule)  # fmt: skip
    step_seconds = statistics.median(timer.times[10:])
    interval = config["trainer"]["val_check_interval"]

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        # The judge and the real features live in the usual cache (~/.cache/m2gan), as in training.
        fid_args = config["fid"]
        if args.quick:  # fewer images and a rougher judge (the default one trains for about a minute)
            judge = judge_file(JudgeRecipe(resolution=config["data"]["resolution"], **SMOKE_RECIPE))
            fid_args = dict(fid_args, num_samples=200, feature_extractor_weights_path=str(judge))
        rows.append(compare(model, datamodule, FID(**fid_args), repeats, cache))
        if args.inception:
            weights = untrained_inception(os.path.join(cache, "inception.pth"))
            count = min(args.inception, 64) if args.quick else args.inception
            callback = FID(num_samples=count, feature_extractor_weights_path=weights, cache_dir=cache)
            rows.append(compare(model, datamodule, callback, repeats, cache))

    print(f"\nfid_cost: {torch.get_num_threads()} threads, {os.cpu_count()} cores, median of {repeats}")
    print(f"training: {step_seconds * 1000:.0f} ms/batch; one validation interval ({interval} batches) "
          f"= {interval * step_seconds:.0f} s")  # fmt: skip
    for row in rows:
        print(f"{row['name']}: callback {row['callback']:.2f} s (FID {row['fid']:.4f}), bare generate + "
              f"calculate_metrics {row['bare']:.2f} s (FID {row['bare_fid']:.4f}) -> ratio {row['callback'] / row['bare']:.2f}x; "
              f"{100 * row['callback'] / (interval * step_seconds):.1f}% of the training time between evaluations")  # fmt: skip


if __name__ == "__main__":
    main()
