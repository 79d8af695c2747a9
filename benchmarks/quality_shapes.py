"""Does the default config learn text conditioning? Train it for a wall-clock budget, then judge.

1. Train ``configs/default.yaml`` through ``train.py``'s CLI for ``--minutes`` of wall-clock time.
   Several budgets (``--minutes 2 5 10``) share one run: the model's weights are snapshotted when
   the training time passes each budget, and every snapshot is judged below (quality per
   CPU-minute).
2. Train an attribute classifier (the judge) on real single-object shapes images and report its
   accuracy on real validation images (it must be near 100% for its verdicts to mean anything).
3. Draw one image with the EMA generator for each of ``--eval-images`` captions of the test
   split (single objects) and print the judge's shape, colour, size and position accuracy next to
   the chance level.
4. Caption real images with the EMA captioner (greedy): corpus BLEU-1…4 on the validation split
   against its 5 reference captions per image, and the share of single-object test
   images whose caption names exactly their colour and shape (read off the ground truth).
5. Binding: a second judge reads two-object scenes (each object's colour and shape, in reading
   order, and the axis they sit on). For ``--pair-images`` two-object test captions, the share
   of generated images with *everything* right (chance well under 1%), next to the judge's own
   rate on real images; the share of real two-object test images whose caption names both
   objects' colour and shape and their relation right; and who reads binding, per twin kind: the
   discriminator (own caption ranked above the twin on the real test images), the conditioning
   (caption–twin sentence cosine, and distance over another caption's), the EMA captioner on the
   real images and on the drawings (``val/binding_acc/*``, ``val/twin_cosine/*``,
   ``val/twin_distance/*``, ``val/caption_binding/*``, ``val/caption_binding_fake/*``), with how
   many captions have twins and how many twins are false (synonyms exchanged); and an independent
   reader (:mod:`m2gan.eval.binding_reader`, a captioner trained on real pairs only, cached) on the
   drawings, with whether it ranks the variants as the pair judge does.
6. With ``--held-out``, some (colour, shape) combinations never appear in training; the test
   captions are split into scenes that show one and the rest, and both are judged.
7. Text–image consistency without ground truth: R-precision (100 candidates) of the same drawn
   images in the eyes of the dual-encoder evaluator trained on the run's own training data
   (:mod:`m2gan.eval.evaluator`), for two-object captions also with their binding twins among the
   candidates (``val/r_precision_binding``), next to the judge's verdicts, and whether the two rank the
   snapshots and the variants alike. Also what the evaluator costs: its training (once per
   data) and one evaluation as ``callbacks.TextImageConsistency`` runs it.

``--variant NAME=ARGS`` (repeatable) trains several variants in one run, one after the other, each
for the same wall-clock budget, and judges them alike with the same judges and captions.

    python benchmarks/quality_shapes.py                  # 10 minutes of training
    python benchmarks/quality_shapes.py --minutes 2 5 10 # quality after 2, 5 and 10 minutes, one run
    python benchmarks/quality_shapes.py --quick          # 1 minute, a smoke run
    python benchmarks/quality_shapes.py --coco-format 12000   # the real-data path: see --coco-format
    python benchmarks/quality_shapes.py -- --model.cycle_weight 0   # extra CLI overrides
    python benchmarks/quality_shapes.py --held-out "purple triangle" "cyan cross" \
        --variant sentence= --variant "attention=--model.word_attention_sides=[8,16]"   # same-run ablation
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from callbacks.collapse import image_statistics
from m2gan.cli import main as cli_main
from m2gan.data.shapes import ShapesDataset, named_attributes, named_relation, parse_combinations
from m2gan.eval import binding_reader as br
from m2gan.eval import evaluator as ev
from m2gan.eval.bleu import corpus_bleu
from m2gan.eval.shapes_judge import (
    ATTRIBUTES,
    PAIR_ATTRIBUTES,
    SMOKE_RECIPE,
    JudgeRecipe,
    accuracy,
    labelled_images,
    scene_labels,
    train_judge,
)
from m2gan.grid import prompt_grid
from m2gan.negatives import TWIN_KINDS, binding_twins
from m2gan.tokenizer import SPECIAL_TOKENS
from train import NAMED_CALLBACKS

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
    parser.add_argument(
        "--held-out",
        nargs="+",
        default=[],
        metavar="COMBINATION",
        help='(colour, shape) combinations such as "purple triangle" that training never shows; the test '
        "captions are split into scenes that show one and the rest, and both are reported",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="train one more variant in this run, with these extra train.py fit arguments (repeatable; "
        'e.g. "sentence=" "attention=--model.word_attention_sides=[8,16]"); all are judged alike',
    )
    parser.add_argument(
        "--background",
        choices=["gradient", "black"],
        default="gradient",
        help="backgrounds of the shapes data, of its COCO-format copy and of the judges' images; black puts most "
        "pixels at the bottom of the range (the dark-data collapse case)",
    )
    parser.add_argument(
        "--two-object-prob", type=float, default=0.25, help="share of two-object scenes in the training data"
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


def train(args: argparse.Namespace, workdir: str, overrides: list[str], coco_root: Path | None):
    """Train one variant for the longest budget (on the COCO-format copy at ``coco_root`` if given);
    the trained module and its snapshots."""
    seconds = int(round(max(args.minutes) * 60))
    budget = f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    real_data = []
    if coco_root is not None:
        configs = (ROOT / "configs" / "sizes" / "cpu-64px.yaml", ROOT / "configs" / "data" / "coco.yaml")
        real_data = [*(f"--config={c}" for c in configs), f"--data.root={coco_root}", "--data.augment=false"]
    else:
        real_data = [f"--data.background={args.background}", f"--data.two_object_prob={args.two_object_prob}"]
        if args.held_out:
            real_data.append(f"--data.held_out={json.dumps(args.held_out)}")
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
            # A smoke run skips the training run's own validation (and the judge and evaluator it would train).
            *(["--trainer.limit_val_batches=0"] if args.quick else []),
            *args.overrides,
            *overrides,
        ],
        named_callbacks=NAMED_CALLBACKS,
    )
    snapshots = next(c for c in cli.trainer.callbacks if type(c).__name__ == "Snapshots").taken
    return cli.model.cpu().eval(), snapshots


def split_by_combination(dataset: ShapesDataset, held_out: list[str], count: int) -> tuple[list[int], list[int]]:
    """The first ``count`` indices of ``dataset`` whose scene shows no held-out (colour, shape)
    combination, and the first ``count`` that show one (none without ``held_out``)."""
    excluded = parse_combinations(held_out)
    seen, held = [], []
    for i in range(len(dataset)):
        if len(seen) >= count and (len(held) >= count or not excluded):
            break
        shown = {(o.colour, o.shape) for o in dataset.scene(i).objects}
        (held if shown & excluded else seen).append(i)
    return seen[:count], held[:count]


def generate(model, captions: list[str], seed: int) -> torch.Tensor:
    """One image per caption, in chunks of 250 (the noise of chunk k is seeded ``seed + 250 k``)."""
    chunks = [model.ema.generate(captions[i : i + 250], seed=seed + i) for i in range(0, len(captions), 250)]
    return torch.cat(chunks) if chunks else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)


def main() -> None:
    args = parse_args()
    if args.quick:
        args.minutes, args.eval_images = [min(min(args.minutes), 1.0)], min(args.eval_images, 200)
        args.bleu_images = min(args.bleu_images, 128)
        args.pair_images = min(args.pair_images, 100)
    variants = [v.partition("=") for v in args.variant] or [("run", "=", "")]
    os.environ.setdefault("WANDB_MODE", "offline")

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        coco_root = None
        if args.coco_format:  # written once, read by every variant
            coco_root, start = Path(args.out or tmp) / "coco", time.perf_counter()
            sizes = {"train": args.coco_format, "val": 1000}
            write_coco(coco_root, sizes, 64, args.held_out, args.background, args.two_object_prob)
            print(f"wrote {args.coco_format} + 1000 COCO-format images in {time.perf_counter() - start:.0f} s")
        for name, _, extra in variants:
            workdir = os.path.join(args.out or tmp, name)
            print(f"training {name}: {extra or '(no extra arguments)'}")
            runs.append((name, *train(args, workdir, shlex.split(extra), coco_root)))
    resolution = runs[0][1].hparams.resolution

    # The judge learns the attributes at the model's resolution, from its own slice of the data.
    start = time.perf_counter()
    background = {"background": args.background}
    quick = SMOKE_RECIPE if args.quick else {}
    judge = train_judge(JudgeRecipe(resolution=resolution, **background, **quick))
    val_images, val_labels = labelled_images(
        ShapesDataset("val", 1000, resolution, seed=99, two_object_prob=0.0, **background), 1000
    )
    judge_accuracy = accuracy(judge, val_images, val_labels)
    pair_judge = train_judge(
        JudgeRecipe(resolution=resolution, kind="pair", **background, **(quick or {"steps": 1500}))
    )
    pair_val = ShapesDataset("val", 1000, resolution, seed=99, two_object_prob=1.0, **background)
    pair_judge_accuracy = accuracy(pair_judge, *labelled_images(pair_val, 1000, "pair"))
    judge_seconds = time.perf_counter() - start

    # Held-out test captions; with --held-out, split into scenes that show a held-out combination and the rest.
    test = ShapesDataset("test", 10**6, resolution, seed=args.seed, two_object_prob=0.0, **background)
    pairs = ShapesDataset("test", 10**6, resolution, seed=args.seed, two_object_prob=1.0, **background)
    tests = {
        "single": (test, "single", split_by_combination(test, args.held_out, args.eval_images)),
        "pair": (pairs, "pair", split_by_combination(pairs, args.held_out, args.pair_images)),
    }
    consistency = Consistency(runs[0][1], tests, quick=args.quick)
    # The independent binding reader: a captioner trained on real pairs of the first variant's data only.
    start = time.perf_counter()
    reader_recipe = br.ReaderRecipe(pool_size=200, steps=20) if args.quick else br.ReaderRecipe()
    first = runs[0][1]
    reader_path = br.reader_file(first.trainer.datamodule.datasets["train"], first.tokenizer, resolution, reader_recipe)
    reader, reader_tokenizer = br.load_reader(reader_path)
    pair_captions = [pairs.caption(i) for i in tests["pair"][2][0]]
    pair_images = torch.stack([pairs.image(i) for i in tests["pair"][2][0]])
    reader_ceiling = br.twin_preference(reader, reader_tokenizer, pair_images, pair_captions)
    reader_seconds = time.perf_counter() - start
    rows = []
    for name, model, snapshots in runs:
        for budget, (train_seconds, batches, state) in zip(sorted(args.minutes), snapshots):
            model.load_state_dict(state)
            row = {"variant": name, "budget": budget, "seconds": train_seconds, "batches": batches}
            for kind, (dataset, judge_kind, (seen, held)) in tests.items():
                judge_of = judge if judge_kind == "single" else pair_judge
                for subset, indices in (("seen", seen), ("held", held)):
                    if indices:
                        drawn = generate(model, [dataset.caption(i) for i in indices], args.seed)
                        labels = scene_labels(dataset, indices, judge_kind)
                        if kind == "single" and subset == "seen":  # the collapse alarm's figures, on more images
                            real = image_statistics(torch.stack([dataset.image(i) for i in indices]))
                            row["collapse"] = {k: v / real[k] for k, v in image_statistics(drawn).items()}
                        row[f"{kind}_{subset}"] = accuracy(judge_of, drawn, labels)
                        if kind == "pair" and subset == "seen":
                            row["reader"] = br.twin_preference(reader, reader_tokenizer, drawn, pair_captions)
                        if kind == "single":  # colour and shape right together: the combination
                            both = {name: labels[name] for name in ("colour", "shape")}
                            row[f"{kind}_{subset}"]["combination"] = accuracy(judge, drawn, both)["all"]
            row["r_precision"] = consistency.score(model, args.seed)
            single_seen = tests["single"][2][0]
            row["bleu"], row["captions"] = caption_quality(model, test, single_seen, args.bleu_images, args)
            row["pair_captions"] = pair_caption_accuracy(model, pairs, tests["pair"][2][0])
            row["binding"] = discriminator_binding(model, pairs, tests["pair"][2][0], args.seed)
            rows.append(row)
    if args.out:  # samples of each variant's longest run (its last snapshot is loaded)
        captions = [test.caption(i) for i in tests["single"][2][0][:8]]
        for name, model, _ in runs:
            grid = prompt_grid(model.ema.generate(captions, num_images=6, seed=args.seed), captions, scale=3)
            grid.save(os.path.join(args.out, f"judged_samples_{name}.png"))

    print(f"\nquality_shapes: {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(f"judge trained in {judge_seconds:.0f} s; its accuracy on real validation images: "
          + ", ".join(f"{name} {judge_accuracy[name]:.1%}" for name in ATTRIBUTES))  # fmt: skip
    print("chance: " + ", ".join(f"{name} {1 / classes:.1%}" for name, classes in ATTRIBUTES.items()))
    print("pair judge on real two-object validation images: "
          + ", ".join(f"{name} {value:.1%}" for name, value in pair_judge_accuracy.items()))  # fmt: skip
    if args.held_out:
        print(f"held-out combinations (never in training): {', '.join(args.held_out)}")
    for row in rows:
        single, binding = row["single_seen"], row["pair_seen"]
        print(
            f"\n{row['variant']}, after {row['budget']:g} min (trained {row['seconds']:.0f} s, {row['batches']} batches):"
        )
        print(f"{'attribute':<10} {'chance':>7} {'judge on real':>14} {'generated':>10}")
        for name, classes in ATTRIBUTES.items():
            print(f"{name:<10} {1 / classes:>7.1%} {judge_accuracy[name]:>14.1%} {single[name]:>10.1%}")
        print(f"captions of {args.bleu_images} validation images: "
              + ", ".join(f"{k} {v:.3f}" for k, v in row["bleu"].items()))  # fmt: skip
        print(f"captions naming the right colour and shape ({len(tests['single'][2][0])} test images): "
              f"{row['captions']:.1%}")  # fmt: skip
        print(f"two-object scenes ({len(tests['pair'][2][0])} test captions), generated with everything right: "
              f"{binding['all']:.1%} (judge on real: {pair_judge_accuracy['all']:.1%}); per attribute: "
              + ", ".join(f"{name} {binding[name]:.1%}" for name in PAIR_ATTRIBUTES))  # fmt: skip
        print(f"captions of real two-object images naming both objects and the relation right: "
              f"{row['pair_captions']:.1%}")  # fmt: skip
        print("discriminator on real two-object test images, own caption ranked above its binding twin "
              "(caption-twin sentence cosine): "
              + ", ".join(f"{kind} {row['binding'][f'binding_acc/{kind}']:.1%} "
                          f"({row['binding'][f'twin_cosine/{kind}']:.2f})" for kind in TWIN_KINDS))  # fmt: skip
        if args.held_out:
            for kind, score, what in (
                ("single", "combination", "single objects with colour and shape right"),
                ("pair", "all", "two-object scenes with everything right"),
            ):
                seen, held = row[f"{kind}_seen"][score], row[f"{kind}_held"][score]
                print(f"{what}: seen combinations {seen:.1%}, scenes with a held-out one {held:.1%}")
    print("\ncollapse alarm's figures of the judged single-object images (share of the real images'; under 0.1 is "
          "a collapse): " + "; ".join(f"{r['variant']} {r['budget']:g} min detail {r['collapse']['detail']:.2f} "
                                      f"spread {r['collapse']['spread']:.2f}" for r in rows))  # fmt: skip
    print(f"\n{'variant':<12} {'minutes':>7} {'batches':>8} " + " ".join(f"{name:>9}" for name in ATTRIBUTES)
          + f" {'BLEU-4':>7} {'captions':>9} {'pairs':>7} {'pair captions':>13}"
          + (f" {'held single':>11} {'held pairs':>10}" if args.held_out else ""))  # fmt: skip
    for row in rows:
        single = row["single_seen"]
        print(f"{row['variant']:<12} {row['budget']:>7g} {row['batches']:>8} "
              + " ".join(f"{single[n]:>9.1%}" for n in ATTRIBUTES)
              + f" {row['bleu']['bleu4']:>7.3f} {row['captions']:>9.1%} {row['pair_seen']['all']:>7.1%}"
              + f" {row['pair_captions']:>13.1%}"
              + (f" {row['single_held']['combination']:>11.1%} {row['pair_held']['all']:>10.1%}" if args.held_out else ""))  # fmt: skip
    twins = twin_census(runs[0][1], pairs, tests["pair"][2][0])
    print("\nbinding twins of the two-object test captions (corpus evidence): found for "
          + ", ".join(f"{kind} {found:.1%}" for kind, (found, _) in twins.items())
          + "; of those, saying the same as the caption (synonyms: false twins): "
          + ", ".join(f"{kind} {false:.1%}" for kind, (_, false) in twins.items()))  # fmt: skip
    print("who reads binding, per twin kind (attribute / noun / relation): D = critic ranks own caption above "
          "twin; cos = caption-twin sentence cosine; dist = caption-twin distance over another caption's; "
          "C real / C fake = EMA captioner finds own caption likelier than twin on the real / generated image; "
          "R real / R fake = the critic's word-region head (if on) matches own caption better than twin")
    print(f"{'variant':<12} {'minutes':>7} " + " ".join(f"{label:>20}" for label in
          ("D", "cos", "dist", "C real", "C fake", "R real", "R fake")))  # fmt: skip
    for row in rows:
        b = row["binding"]
        cells = []
        for meter, percent in zip(BINDING_METERS, (True, False, False, True, True, True, True)):
            values = [b[f"{meter}/{kind}"] for kind in TWIN_KINDS]
            cells.append(" / ".join(f"{100 * v:.0f}" if percent else f"{v:.2f}" for v in values))
        print(f"{row['variant']:<12} {row['budget']:>7g} " + " ".join(f"{c:>20}" for c in cells))
    print(f"\nindependent binding reader (a captioner trained on real pairs only; {reader_seconds:.0f} s, cached): "
          "own caption likelier than its twin given the drawing, attribute / noun / relation; on the real "
          "images (its ceiling): " + " / ".join(f"{v:.1%}" for v, _ in reader_ceiling.values()))  # fmt: skip
    reader_means = []
    for row in rows:
        reader_means.append(sum(v for v, _ in row["reader"].values()) / len(row["reader"]))
        print(f"{row['variant']:<12} {row['budget']:>7g} " + " / ".join(f"{v:.1%}" for v, _ in row["reader"].values())
              + f"  (mean {reader_means[-1]:.1%}; pair judge all {row['pair_seen']['all']:.1%})")  # fmt: skip
    if len(rows) > 1:
        print("reader and pair judge rank the variants alike: "
              + same_order([row["pair_seen"]["all"] for row in rows], reader_means))  # fmt: skip
    consistency.report(rows, runs[0][1])


class Consistency:
    """R-precision of the judged captions' images in the evaluator's eyes (step 7)."""

    def __init__(self, model, tests: dict, quick: bool) -> None:
        self.recipe = ev.EvaluatorRecipe(**({"pool_size": 500, "steps": 50} if quick else {}))
        train = model.trainer.datamodule.datasets["train"]
        start = time.perf_counter()
        self.evaluator, self.tokenizer, _ = ev.load_evaluator(
            ev.evaluator_file(train, model.tokenizer, model.hparams.resolution, self.recipe)
        )
        self.load_seconds = time.perf_counter() - start
        self.sets, self.real = {}, {}
        for kind, (dataset, _, (seen, _)) in tests.items():  # the judged captions, and their real images
            captions = [dataset.caption(i) for i in seen]
            if len(set(captions)) < 100:
                continue
            self.sets[kind] = (captions, ev.candidate_sets(captions, 100, seed=0))
            images = torch.stack([dataset.image(i) for i in seen])
            text = ev.embed_captions(self.evaluator, self.tokenizer, captions)
            embedded = ev.embed_images(self.evaluator, images)
            self.real[kind] = (text, ev.r_precision(embedded, text, self.sets[kind][1]))
            if kind == "pair":  # val/r_precision_binding: candidates begin with the caption's binding twins
                twins = ev.caption_twins(captions, model.tokenizer, model.objective.word_pairs)
                texts, rows, sets = ev.binding_candidate_sets(captions, twins, 100, seed=0)
                text = ev.embed_captions(self.evaluator, self.tokenizer, texts)
                self.binding = (text, rows, sets, ev.r_precision(embedded[rows], text, sets))

    def score(self, model, seed: int) -> dict[str, float]:
        scores = {}
        for kind, (captions, sets) in self.sets.items():
            drawn = ev.embed_images(self.evaluator, generate(model, captions, seed))
            scores[kind] = ev.r_precision(drawn, self.real[kind][0], sets)
            if kind == "pair":
                text, rows, binding_sets, _ = self.binding
                scores["binding"] = ev.r_precision(drawn[rows], text, binding_sets)
        return scores

    def report(self, rows: list[dict], model) -> None:
        """Print R-precision beside the judge, whether they rank alike, and what the evaluator costs."""
        if "single" not in self.sets:
            print("\nR-precision: fewer than 100 distinct judged captions; skipped")
            return
        print("\nR-precision (100 candidates, chance 1.0%) beside the judge, same drawn images; "
              f"evaluator's own on the real images: single {self.real['single'][1]:.1%}"
              + (f", pairs {self.real['pair'][1]:.1%}, binding {self.binding[3]:.1%} "
                 f"({len(self.binding[1])} pair captions with twins)" if "pair" in self.real else ""))  # fmt: skip
        print(f"{'variant':<12} {'minutes':>7} {'batches':>8} {'judge all':>9} {'R-prec':>7} {'pairs judge':>11} "
              f"{'R-prec':>7} {'R-binding':>9}")  # fmt: skip
        for row in rows:
            pair = (f"{row['pair_seen']['all']:>11.1%} {row['r_precision']['pair']:>7.1%} "
                    f"{row['r_precision']['binding']:>9.1%}" if "pair" in self.sets else "")  # fmt: skip
            print(f"{row['variant']:<12} {row['budget']:>7g} {row['batches']:>8} {row['single_seen']['all']:>9.1%} "
                  f"{row['r_precision']['single']:>7.1%} {pair}")  # fmt: skip
        judge = [row["single_seen"]["all"] for row in rows]
        rprec = [row["r_precision"]["single"] for row in rows]
        by_variant: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_variant.setdefault(row["variant"], []).append(i)
        for variant, indices in by_variant.items():
            print(f"{variant}: snapshots ranked alike by the judge and R-precision: "
                  f"{same_order([judge[i] for i in indices], [rprec[i] for i in indices])}")  # fmt: skip
        finals = [indices[-1] for indices in by_variant.values()]
        if len(finals) > 1:
            print(
                "final snapshots of the variants ranked alike: "
                + same_order([judge[i] for i in finals], [rprec[i] for i in finals])
            )
            if "pair" in self.sets:
                pair_judge = [rows[i]["pair_seen"]["all"] for i in finals]
                pair_rprec = [rows[i]["r_precision"]["pair"] for i in finals]
                print(f"... and on two-object scenes: {same_order(pair_judge, pair_rprec)}")
                binding_rprec = [rows[i]["r_precision"]["binding"] for i in finals]
                print(f"... and by binding R-precision: {same_order(pair_judge, binding_rprec)}")
        # What the default job pays: training the evaluator once, then each validation's evaluation.
        train = model.trainer.datamodule.datasets["train"]
        start = time.perf_counter()
        ev.train_evaluator(*ev.training_pairs(train, self.recipe.pool_size), model.tokenizer, self.recipe)
        train_seconds = time.perf_counter() - start
        captions = self.sets["single"][0]
        start = time.perf_counter()
        ev.embed_images(self.evaluator, generate(model, captions, 0))
        ev.embed_images(self.evaluator, model.ema.generate(captions[:50], num_images=8, seed=0, batch_size=256))
        eval_seconds = time.perf_counter() - start
        print(
            f"evaluator cost: training {train_seconds:.1f} s once per data (cached), one evaluation of "
            f"{len(captions)} captions + 50 x 8 for diversity {eval_seconds:.1f} s"
        )


def same_order(a: list[float], b: list[float]) -> str:
    """ "yes" when ``b`` orders every pair that ``a`` orders strictly the same way (ties in ``b`` count against)."""
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a)) if a[i] != a[j]]
    agree = sum((a[i] - a[j]) * (b[i] - b[j]) > 0 for i, j in pairs)
    return f"{'yes' if agree == len(pairs) else 'no'} ({agree} of {len(pairs)} pairs)"


def caption_quality(
    model, test: ShapesDataset, indices: list[int], bleu_images: int, args: argparse.Namespace
) -> tuple[dict[str, float], float]:
    """Corpus BLEU on validation images (the training data's kind), and how often captions of the
    ``test`` images at ``indices`` name their colour and shape."""
    data = model.trainer.datamodule.hparams
    val = ShapesDataset(
        "val", bleu_images, model.hparams.resolution, data.seed, args.two_object_prob, background=args.background
    )
    images = torch.stack([val.image(i) for i in range(bleu_images)])
    hypotheses = [c for i in range(0, bleu_images, 256) for c in model.ema.caption(images[i : i + 256])]
    references = [
        [model.tokenizer.normalize(r) for r in val.references(i, data.num_references)] for i in range(len(val))
    ]
    bleu = corpus_bleu(hypotheses, references)
    test_images = torch.stack([test.image(i) for i in indices])
    captions = [c for i in range(0, len(indices), 256) for c in model.ema.caption(test_images[i : i + 256])]
    labels = scene_labels(test, indices)
    named = [named_attributes(c) for c in captions]
    right = [
        n["shape"] == [labels["shape"][i].item()] and n["colour"] == [labels["colour"][i].item()]
        for i, n in enumerate(named)
    ]
    return bleu, sum(right) / len(right)


def write_coco(
    folder: Path,
    sizes: dict[str, int],
    resolution: int,
    held_out: list[str],
    background: str = "gradient",
    two_object_prob: float = 0.25,
) -> None:
    """The shapes data (the data module's default seed) as a COCO captions dataset.

    ``sizes`` maps a split ("train", "val") to its image count; each image gets its 5 reference
    captions, the first being the one the shapes data trains with. The training split shows none
    of the ``held_out`` combinations.
    """
    from PIL import Image

    for split, count in sizes.items():
        images_dir, rows, annotations = folder / f"{split}2017", [], []
        images_dir.mkdir(parents=True)
        dataset = ShapesDataset(split, count, resolution, two_object_prob=two_object_prob, held_out=held_out,
                                background=background)  # fmt: skip
        for i in range(count):
            pixels = ((dataset.image(i) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(images_dir / f"{i:06d}.png")
            rows.append({"id": i, "file_name": f"{i:06d}.png"})
            for k, caption in enumerate(dataset.references(i, 5)):
                annotations.append({"id": 5 * i + k, "image_id": i, "caption": caption})
        (folder / "annotations").mkdir(exist_ok=True)
        captions = {"images": rows, "annotations": annotations}
        (folder / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(captions))


def pair_caption_accuracy(model, pairs: ShapesDataset, indices: list[int]) -> float:
    """How often the captioner's caption of a real two-object image (``pairs`` at ``indices``) names both
    objects' colour and shape and their relation right (in either order: "A left of B" and "B right of A" agree)."""
    images = torch.stack([pairs.image(i) for i in indices])
    truth = scene_labels(pairs, indices, "pair")
    captions = [c for i in range(0, len(indices), 256) for c in model.ema.caption(images[i : i + 256])]
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


BINDING_METERS = ("binding_acc", "twin_cosine", "twin_distance", "caption_binding", "caption_binding_fake",
                  "region_binding", "region_binding_fake")  # fmt: skip


@torch.no_grad()
def discriminator_binding(model, pairs: ShapesDataset, indices: list[int], seed: int) -> dict[str, float]:
    """The model's own binding meters (``val/binding_acc/*``, ``val/twin_cosine/*``, ``val/twin_distance/*``,
    ``val/caption_binding/*`` and ``val/caption_binding_fake/*``, the EMA captioner's) on the real
    two-object test images at ``indices`` and the EMA generator's images of their captions, each
    caption's twins made with the run's corpus evidence."""
    totals: dict[str, list[float]] = {}
    for start in range(0, len(indices), 250):
        chunk = indices[start : start + 250]
        images = torch.stack([pairs.image(i) for i in chunk])
        captions = [pairs.caption(i) for i in chunk]
        drawn = generate(model, captions, seed + start).float() / 127.5 - 1
        tokens = model.tokenizer.encode(captions)
        for name, (value, count) in model.objective.binding_metrics(images, tokens, model.ema.captioner, drawn).items():
            total = totals.setdefault(name, [0.0, 0])
            total[0], total[1] = total[0] + float(value) * count, total[1] + count
    return {name: total / count for name, (total, count) in totals.items()} | {
        f"{what}/{kind}": float("nan")
        for what in BINDING_METERS
        for kind in TWIN_KINDS
        if f"{what}/{kind}" not in totals
    }


def twin_census(model, pairs: ShapesDataset, indices: list[int]) -> dict[str, tuple[float, float]]:
    """Per twin kind: the share of the captions at ``indices`` that have a twin, and the share of those
    twins that say the same as their caption (synonymous words exchanged: false negatives)."""

    def meaning(caption: str) -> tuple:
        named, where = named_attributes(caption), named_relation(caption)
        objects = list(zip(named["size"], named["colour"], named["shape"]))
        opposite = {"left": "right", "right": "left", "above": "below", "below": "above", None: None}
        return {(tuple(objects), where), (tuple(objects[::-1]), opposite[where])}

    captions = [pairs.caption(i) for i in indices]
    tokens = model.tokenizer.encode(captions)
    census = {}
    for kind, (twins, found) in binding_twins(tokens, len(SPECIAL_TOKENS), model.objective.word_pairs).items():
        rows = found.nonzero().flatten().tolist()
        false = sum(bool(meaning(captions[r]) & meaning(model.tokenizer.decode(twins[r]))) for r in rows)
        census[kind] = (len(rows) / len(captions), false / max(len(rows), 1))
    return census


if __name__ == "__main__":
    main()
