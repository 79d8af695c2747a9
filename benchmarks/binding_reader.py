"""Does the independent binding reader rank checkpoints as the shapes pair judge does?

For each checkpoint, the EMA generator draws ``--pair-images`` two-object test captions of the
shapes data (the captions and noise ``quality_shapes.py --seed S`` judges), and two readers score
the drawings:

* the pair judge (:mod:`m2gan.eval.shapes_judge`, ground truth): the share with both objects'
  colour and shape and the axis right;
* the independent reader (:mod:`m2gan.eval.binding_reader`: a captioner trained on real pairs of the
  default shapes data only, cached): per twin kind, how often it finds the caption likelier than
  its binding twin given the drawing; and the same on the real images (its ceiling).

Printed: one row per checkpoint, and whether the reader's mean over kinds orders the checkpoints
as the judge does (the test a meter without ground truth must pass). For training checkpoints, also
the model's own critic on the same scenes, per kind: the projection head (``val/binding_acc``) on
the real images, and the word-region head, if on (``val/region_binding``, ``val/region_binding_fake``),
on the real images and the drawings: does a critic head read binding, and do the drawings show it?

    python benchmarks/binding_reader.py runs/a/last.ckpt runs/b/last.ckpt --seed 0
    python benchmarks/binding_reader.py --quick           # a smoke run: tiny reader, 60 captions, an untrained model
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from smoke import untrained_model  # benchmarks/smoke.py

import m2gan
from m2gan.data import CaptionDataModule
from m2gan.data.shapes import ShapesDataset
from m2gan.eval import binding_reader as br
from m2gan.eval.shapes_judge import JudgeRecipe, accuracy, scene_labels, train_judge
from m2gan.model import M2GAN


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help="training checkpoints (or exports) of 32 px shapes runs")
    parser.add_argument("--seed", type=int, default=0, help="test captions and noise, as quality_shapes.py --seed")
    parser.add_argument("--pair-images", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="a smoke run: a reader of 20 steps, 60 captions")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not args.checkpoints and not args.quick:
        raise SystemExit("binding_reader.py: name at least one checkpoint")
    recipe, judge_recipe = br.ReaderRecipe(), JudgeRecipe(kind="pair", steps=1500)
    if args.quick:
        recipe, judge_recipe = br.ReaderRecipe(pool_size=200, steps=20), JudgeRecipe(kind="pair", steps=20)
        args.pair_images = min(args.pair_images, 60)
    start = time.perf_counter()
    data = CaptionDataModule()  # the default job's data: the reader's training pairs and tokenizer
    data.setup("fit")
    reader, tokenizer = br.load_reader(br.reader_file(data.datasets["train"], data.tokenizer, 32, recipe))
    judge = train_judge(judge_recipe)
    print(f"reader and pair judge ready in {time.perf_counter() - start:.0f} s (the reader is cached)")

    pairs = ShapesDataset("test", 10**6, 32, seed=args.seed, two_object_prob=1.0)
    indices = list(range(args.pair_images))
    captions = [pairs.caption(i) for i in indices]
    labels = scene_labels(pairs, indices, "pair")
    real = torch.stack([pairs.image(i) for i in indices])
    ceiling = br.twin_preference(reader, tokenizer, real, captions)
    print(f"reader on the real images (its ceiling): {_kinds(ceiling)}; judge on them: "
          f"{accuracy(judge, real, labels)['all']:.1%}")  # fmt: skip

    pipelines = [(path, lambda path=path: m2gan.load(path)) for path in args.checkpoints]
    if not pipelines:  # the smoke run: an untrained model of the default data
        pipelines = [("untrained", lambda: untrained_model(data).ema)]
    judged, read = [], []
    print(f"\nbinding_reader: {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(f"{'checkpoint':<60} {'judge all':>9} {'reader attribute / noun / relation':>36} {'mean':>6}")
    for path, load in pipelines:
        pipeline = load()
        chunks = range(0, len(captions), 250)  # as quality_shapes.py draws them
        drawn = torch.cat([pipeline.generate(captions[i : i + 250], seed=args.seed + i) for i in chunks])
        preference = br.twin_preference(reader, tokenizer, drawn, captions)
        mean = sum(v for v, _ in preference.values()) / len(preference)
        judged.append(accuracy(judge, drawn, labels)["all"])
        read.append(mean)
        print(f"{path[-60:]:<60} {judged[-1]:>9.1%} {_kinds(preference):>36} {mean:>6.1%}")
        if os.path.isfile(path):
            heads = critic_heads(M2GAN.load(path), real, drawn, captions)
            print(f"{'':<60} critic: " + "; ".join(f"{name} {_kinds(value)}" for name, value in heads.items()))
    pairs_ordered = [(i, j) for i in range(len(judged)) for j in range(i + 1, len(judged)) if judged[i] != judged[j]]
    agree = sum((judged[i] - judged[j]) * (read[i] - read[j]) > 0 for i, j in pairs_ordered)
    print(f"\nreader orders the checkpoints as the judge does: {agree} of {len(pairs_ordered)} pairs")


@torch.no_grad()
def critic_heads(model: M2GAN, real: torch.Tensor, drawn: torch.Tensor, captions: list[str]) -> dict:
    """The model's binding meters of its critic heads over the scenes, per kind (in chunks of 250)."""
    totals: dict[str, list[float]] = {}
    for i in range(0, len(captions), 250):
        tokens = model.tokenizer.encode(captions[i : i + 250])
        fake = drawn[i : i + 250].float() / 127.5 - 1
        for name, (value, count) in model.objective.binding_metrics(real[i : i + 250], tokens, fake=fake).items():
            if name.startswith(("binding_acc", "region_binding")):
                total = totals.setdefault(name, [0.0, 0])
                total[0], total[1] = total[0] + float(value) * count, total[1] + count
    heads: dict[str, dict] = {}
    for name, (total, count) in totals.items():
        head, kind = name.split("/")
        heads.setdefault({"binding_acc": "D real", "region_binding": "R real"}.get(head, "R drawn"), {})[kind] = (
            total / max(count, 1), count)
    return heads


def _kinds(preference: dict[str, tuple[float, int]]) -> str:
    return " / ".join(f"{value:.1%}" for value, _ in preference.values())


if __name__ == "__main__":
    main()
