"""Does the default config learn text conditioning? Train it for a wall-clock budget, then judge.

1. Train ``configs/default.yaml`` through ``train.py``'s CLI for ``--minutes`` of wall-clock time.
   Several budgets (``--minutes 2 5 10``) share one run: the model's weights are snapshotted when
   the training time passes each budget, and every snapshot is judged below (quality per
   CPU-minute).
2. Train an attribute classifier (the judge) on real single-object shapes images and report its
   accuracy on real validation images (it must be near 100% for its verdicts to mean anything).
3. Draw one image with the EMA generator for each of ``--eval-images`` held-out captions (test
   split, single objects) and print the judge's shape, colour, size and position accuracy next to
   the chance level.
4. Caption real images with the EMA captioner (greedy): corpus BLEU-1…4 on the validation split
   against its 5 reference captions per image, and the share of held-out single-object test
   images whose caption names exactly their colour and shape (read off the ground truth).
5. Binding: a second judge reads two-object scenes (each object's colour and shape, in reading
   order, and the axis they sit on). For ``--pair-images`` held-out two-object captions, the share
   of generated images with *everything* right (chance well under 1%), next to the judge's own
   rate on real images; and the share of real two-object test images whose caption names both
   objects' colour and shape and their relation right.

    python benchmarks/quality_shapes.py                  # 10 minutes of training
    python benchmarks/quality_shapes.py --minutes 2 5 10 # quality after 2, 5 and 10 minutes, one run
    python benchmarks/quality_shapes.py --quick          # 1 minute, a smoke run
    python benchmarks/quality_shapes.py --coco-format 12000   # the real-data path: see --coco-format
    python benchmarks/quality_shapes.py -- --model.cycle_weight 0   # extra CLI overrides
    python benchmarks/quality_shapes.py -- --model.word_attention_sides [8,16] --model.word_region_weight 1   # binding
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from m2gan.cli import main as cli_main
from m2gan.data.shapes import ShapesDataset, named_attributes, named_relation
from m2gan.eval.bleu import corpus_bleu
from m2gan.eval.shapes_judge import (
    ATTRIBUTES,
    PAIR_ATTRIBUTES,
    JudgeRecipe,
    accuracy,
    labelled_images,
    scene_labels,
    train_judge,
)
from m2gan.grid import prompt_grid

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--minutes", type=float, nargs="+", default=[10.0], help="wall-clock training budget(s); one run"
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 minute of training, a rougher judge, fewer judged images: a smoke run"
    )
    parser.add_argument("--eval-images", type=int, default=1000, help="held-out captions to draw and judge")
    parser.add_argument("--bleu-images", type=int, default=512, help="validation images to caption for BLEU")
    parser.add_argument("--pair-images", type=int, default=500, help="held-out two-object captions to draw and judge")
    parser.add_argument(
        "--coco-format",
        type=int,
        metavar="N",
        help="write N training images (and 1,000 validation images, 5 captions each) of the shapes data as a "
        "COCO-format dataset at 64 px and train on it through the COCO loader with configs/sizes/cpu-64px.yaml "
        "(crop augmentation off: the captions name exact positions)",
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="keep the training run here and write a grid of judged samples")
    parser.add_argument("overrides", nargs="*", help="extra train.py fit arguments, after --")
    return parser.parse_args()


class Snapshots(pl.Callback):
    """Copies the model's weights when the training time first passes each budget (in minutes)."""

    def __init__(self, minutes: list[float]) -> None:
        self.budgets = sorted(minutes)
        self.taken: list[tuple[float, int, dict]] = []  # (training seconds, batches, state dict)

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self.start
        if len(self.taken) < len(self.budgets) and elapsed >= 60 * self.budgets[len(self.taken)]:
            self.take(pl_module, elapsed)

    def on_train_end(self, trainer, pl_module) -> None:
        while len(self.taken) < len(self.budgets):  # the run stopped just before the last budget
            self.take(pl_module, time.perf_counter() - self.start)

    def take(self, pl_module, elapsed: float) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.taken.append((elapsed, int(pl_module.g_steps), state))


def main() -> None:
    args = parse_args()
    if args.quick:
        args.minutes, args.eval_images = [min(min(args.minutes), 1.0)], min(args.eval_images, 200)
        args.bleu_images = min(args.bleu_images, 128)
        args.pair_images = min(args.pair_images, 100)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.out or tmp
        seconds = int(round(max(args.minutes) * 60))
        budget = f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        os.environ.setdefault("WANDB_MODE", "offline")
        real_data = []
        if args.coco_format:
            root = Path(workdir) / "coco"
            start = time.perf_counter()
            write_coco(root, {"train": args.coco_format, "val": 1000}, resolution=64)
            print(f"wrote {args.coco_format} + 1000 COCO-format images in {time.perf_counter() - start:.0f} s")
            configs = (ROOT / "configs" / "sizes" / "cpu-64px.yaml", ROOT / "configs" / "data" / "coco.yaml")
            real_data = [*(f"--config={c}" for c in configs), f"--data.root={root}", "--data.augment=false"]
        cli = cli_main(
            args.config,
            [
                "fit",
                *real_data,
                f"--seed_everything={args.seed}",
                f"--trainer.max_time={budget}",
                "--trainer.max_epochs=-1",
                f"--trainer.logger.init_args.save_dir={workdir}",
                "--trainer.enable_progress_bar=false",
                "--trainer.callbacks+=quality_shapes.Snapshots",
                f"--trainer.callbacks.minutes={sorted(args.minutes)}",
                *args.overrides,
            ],
        )
        model = cli.model.cpu().eval()
        resolution = model.hparams.resolution
        snapshots = next(c for c in cli.trainer.callbacks if type(c).__name__ == "Snapshots").taken

    # The judge learns the attributes at the model's resolution, from its own slice of the data.
    start = time.perf_counter()
    judge = train_judge(JudgeRecipe(resolution=resolution, **({"pool_size": 1000, "steps": 60} if args.quick else {})))
    val_images, val_labels = labelled_images(ShapesDataset("val", 1000, resolution, seed=99, two_object_prob=0.0), 1000)
    judge_accuracy = accuracy(judge, val_images, val_labels)
    pair_judge = train_judge(
        JudgeRecipe(
            resolution=resolution, kind="pair", **({"pool_size": 1000, "steps": 60} if args.quick else {"steps": 1500})
        )
    )
    pair_val = ShapesDataset("val", 1000, resolution, seed=99, two_object_prob=1.0)
    pair_judge_accuracy = accuracy(pair_judge, *labelled_images(pair_val, 1000, "pair"))
    judge_seconds = time.perf_counter() - start

    test = ShapesDataset("test", args.eval_images, resolution, seed=args.seed, two_object_prob=0.0)
    captions = [test.caption(i) for i in range(args.eval_images)]
    labels = scene_labels(test, args.eval_images)
    pairs = ShapesDataset("test", args.pair_images, resolution, seed=args.seed, two_object_prob=1.0)
    pair_captions = [pairs.caption(i) for i in range(args.pair_images)]
    pair_truth = scene_labels(pairs, args.pair_images, "pair")
    rows = []
    for budget, (train_seconds, batches, state) in zip(sorted(args.minutes), snapshots):
        model.load_state_dict(state)
        generated = torch.cat(
            [model.ema.generate(captions[i : i + 250], seed=args.seed + i) for i in range(0, len(captions), 250)]
        )
        bleu, caption_accuracy = caption_quality(model, test, labels, args.bleu_images)
        drawn_pairs = torch.cat(
            [
                model.ema.generate(pair_captions[i : i + 250], seed=args.seed + i)
                for i in range(0, len(pair_captions), 250)
            ]
        )
        binding = accuracy(pair_judge, drawn_pairs, pair_truth)
        binding["captions"] = pair_caption_accuracy(model, pairs, pair_truth)
        rows.append(
            (budget, train_seconds, batches, accuracy(judge, generated, labels), bleu, caption_accuracy, binding)
        )
    if args.out:  # samples of the longest run's weights (the last snapshot is loaded)
        grid = prompt_grid(model.ema.generate(captions[:8], num_images=6, seed=args.seed), captions[:8], scale=3)
        grid.save(os.path.join(args.out, "judged_samples.png"))

    print(f"\nquality_shapes: {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(f"judge trained in {judge_seconds:.0f} s; its accuracy on real validation images: "
          + ", ".join(f"{name} {judge_accuracy[name]:.1%}" for name in ATTRIBUTES))  # fmt: skip
    print("chance: " + ", ".join(f"{name} {1 / classes:.1%}" for name, classes in ATTRIBUTES.items()))
    print("pair judge on real two-object validation images: "
          + ", ".join(f"{name} {value:.1%}" for name, value in pair_judge_accuracy.items()))  # fmt: skip
    for budget, train_seconds, batches, generated_accuracy, bleu, caption_accuracy, binding in rows:
        print(f"\nafter {budget:g} min (trained {train_seconds:.0f} s, {batches} batches):")
        print(f"{'attribute':<10} {'chance':>7} {'judge on real':>14} {'generated':>10}")
        for name, classes in ATTRIBUTES.items():
            print(f"{name:<10} {1 / classes:>7.1%} {judge_accuracy[name]:>14.1%} {generated_accuracy[name]:>10.1%}")
        print(
            f"captions of {args.bleu_images} validation images: " + ", ".join(f"{k} {v:.3f}" for k, v in bleu.items())
        )
        print(f"captions naming the right colour and shape ({args.eval_images} test images): {caption_accuracy:.1%}")
        print(f"two-object scenes ({args.pair_images} held-out captions), generated with everything right: "
              f"{binding['all']:.1%} (judge on real: {pair_judge_accuracy['all']:.1%}); per attribute: "
              + ", ".join(f"{name} {binding[name]:.1%}" for name in PAIR_ATTRIBUTES))  # fmt: skip
        print(
            f"captions of real two-object images naming both objects and the relation right: {binding['captions']:.1%}"
        )
    if len(rows) > 1:
        print(f"\n{'minutes':>7} {'batches':>8} " + " ".join(f"{name:>9}" for name in ATTRIBUTES)
              + f" {'BLEU-4':>7} {'captions':>9} {'pairs':>7} {'pair captions':>13}")  # fmt: skip
        for budget, _, batches, generated_accuracy, bleu, caption_accuracy, binding in rows:
            print(f"{budget:>7g} {batches:>8} " + " ".join(f"{generated_accuracy[n]:>9.1%}" for n in ATTRIBUTES)
                  + f" {bleu['bleu4']:>7.3f} {caption_accuracy:>9.1%} {binding['all']:>7.1%}"
                  + f" {binding['captions']:>13.1%}")  # fmt: skip


def caption_quality(model, test: ShapesDataset, labels: dict, bleu_images: int) -> tuple[dict[str, float], float]:
    """Corpus BLEU on validation images, and how often captions of ``test`` images name their colour and shape."""
    data = model.trainer.datamodule.hparams
    val = ShapesDataset("val", bleu_images, model.hparams.resolution, data.seed, data.two_object_prob)
    images = torch.stack([val.image(i) for i in range(bleu_images)])
    hypotheses = [c for i in range(0, bleu_images, 256) for c in model.ema.caption(images[i : i + 256])]
    references = [
        [model.tokenizer.normalize(r) for r in val.references(i, data.num_references)] for i in range(len(val))
    ]
    bleu = corpus_bleu(hypotheses, references)
    test_images = torch.stack([test.image(i) for i in range(len(test))])
    captions = [c for i in range(0, len(test), 256) for c in model.ema.caption(test_images[i : i + 256])]
    named = [named_attributes(c) for c in captions]
    right = [
        n["shape"] == [labels["shape"][i].item()] and n["colour"] == [labels["colour"][i].item()]
        for i, n in enumerate(named)
    ]
    return bleu, sum(right) / len(right)


def write_coco(folder: Path, sizes: dict[str, int], resolution: int) -> None:
    """The shapes data (the data module's default seed and two-object share) as a COCO captions dataset.

    ``sizes`` maps a split ("train", "val") to its image count; each image gets its 5 reference
    captions, the first being the one the shapes data trains with.
    """
    from PIL import Image

    for split, count in sizes.items():
        images_dir, rows, annotations = folder / f"{split}2017", [], []
        images_dir.mkdir(parents=True)
        dataset = ShapesDataset(split, count, resolution)
        for i in range(count):
            pixels = ((dataset.image(i) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(images_dir / f"{i:06d}.png")
            rows.append({"id": i, "file_name": f"{i:06d}.png"})
            for k, caption in enumerate(dataset.references(i, 5)):
                annotations.append({"id": 5 * i + k, "image_id": i, "caption": caption})
        (folder / "annotations").mkdir(exist_ok=True)
        captions = {"images": rows, "annotations": annotations}
        (folder / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(captions))


def pair_caption_accuracy(model, pairs: ShapesDataset, truth: dict[str, torch.Tensor]) -> float:
    """How often the captioner's caption of a real two-object image names both objects' colour and
    shape and their relation right (in either order: "A left of B" and "B right of A" agree)."""
    images = torch.stack([pairs.image(i) for i in range(len(pairs))])
    captions = [c for i in range(0, len(pairs), 256) for c in model.ema.caption(images[i : i + 256])]
    right = 0
    for i, caption in enumerate(captions):
        named, where = named_attributes(caption), named_relation(caption)
        if len(named["shape"]) != 2 or len(named["colour"]) != 2 or where is None:
            continue
        order = (0, 1) if where in ("left", "above") else (1, 0)  # mention order -> reading order
        read = {
            "first_shape": named["shape"][order[0]], "first_colour": named["colour"][order[0]],
            "second_shape": named["shape"][order[1]], "second_colour": named["colour"][order[1]],
            "axis": int(where in ("above", "below")),
        }  # fmt: skip
        right += all(read[name] == truth[name][i].item() for name in PAIR_ATTRIBUTES)
    return right / len(captions)


if __name__ == "__main__":
    main()
