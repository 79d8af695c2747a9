"""Can a critic head that reads binding teach a generator to draw it? (issue 35's next probe)

Starting from a training checkpoint whose word-region head reads binding on real scenes, the
critic and text encoders are frozen and only a copy of the EMA generator trains, for ``--steps`` batches of
the default data's captions, against one of:

* ``region``: the word-region head's loss alone (twins as hard negatives), nothing else;
* ``region+adv``: that plus the projection critic's adversarial loss (what training gives it; with
  the critic frozen the generator soon exploits it, so this row only shows how fast).

Every ``--every`` steps, on 500 held-out two-object test captions (``quality_shapes.py --seed S``'s
scenes): the head's own reading of the drawings per twin kind (``R drawn``: caption above each
twin), and the pair judge's share of scenes all right and per-object colour; and what the term
costs single objects (the shapes judge on 500 single-object test captions).

Two outcomes tell where the signal stops: ``R drawn`` rises while the judge stays at chance (the
generator fools the head: its gradient is not a faithful teacher), or ``R drawn`` stays at chance
(the generator cannot follow that gradient).

    python benchmarks/teacher_probe.py CKPT --seed 0 --steps 1000 --lr 1e-3 --loss region
    python benchmarks/teacher_probe.py --quick     # a smoke run: an untrained model, 4 steps, a rough judge
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
from smoke import untrained_model  # benchmarks/smoke.py

from m2gan import losses
from m2gan.data.shapes import ShapesDataset
from m2gan.eval.shapes_judge import SMOKE_RECIPE, JudgeRecipe, accuracy, judge_file, load_judge, scene_labels
from m2gan.model import M2GAN
from m2gan.objective import Twins, frozen
from m2gan.tokenizer import PAD_ID


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="a training checkpoint with model.objective.word_region_weight > 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--loss", choices=["region", "region+adv"], default="region")
    parser.add_argument("--lr", type=float, default=1e-3, help="the generator's (the default job trains at 1e-3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--two-object-prob", type=float, default=0.5, help="share of two-object training captions")
    parser.add_argument("--pair-images", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="a smoke run: an untrained model, 4 steps, a rough judge")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    judge_recipe = JudgeRecipe(kind="pair", steps=1500)
    if args.quick:
        args.steps, args.every, args.pair_images = 4, 2, 40
        judge_recipe = JudgeRecipe(kind="pair", **SMOKE_RECIPE)
    elif args.checkpoint is None:
        raise SystemExit("teacher_probe.py: name a training checkpoint (or --quick)")
    model = untrained_model(word_region_weight=1.0, word_region_twins=True) if args.quick else M2GAN.load(args.checkpoint)
    model.eval()
    objective = model.objective
    if objective.config.word_region_weight <= 0:
        raise SystemExit(f"{args.checkpoint}: its critic has no word-region head (word_region_weight 0)")
    generator = copy.deepcopy(model.ema.generator).train().requires_grad_(True)  # what is evaluated; the raw copy stays as saved
    condition = model.ema.text_encoder  # the conditioning this generator was averaged with
    optimizer = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.0, 0.99))
    judge, _ = load_judge(judge_file(judge_recipe), "pair")
    single_judge, _ = load_judge(judge_file(JudgeRecipe(**SMOKE_RECIPE) if args.quick else JudgeRecipe()))

    pairs = ShapesDataset("test", 10**6, 32, seed=args.seed, two_object_prob=1.0)
    indices = list(range(args.pair_images))
    captions = [pairs.caption(i) for i in indices]
    labels = scene_labels(pairs, indices, "pair")
    real = torch.stack([pairs.image(i) for i in indices])
    singles = ShapesDataset("test", 10**6, 32, seed=args.seed, two_object_prob=0.0)  # what the term may cost
    single_captions = [singles.caption(i) for i in indices]
    single_labels = scene_labels(singles, indices)
    train = ShapesDataset("train", 10**7, 32, seed=1000 + args.seed, two_object_prob=args.two_object_prob)

    def draw(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = model.tokenizer.encode(texts)
        words, sentence = condition(tokens)
        z = torch.randn(len(texts), generator.noise_dim, generator=torch.Generator().manual_seed(args.seed))
        return tokens, generator(z, sentence, words, tokens == PAD_ID).clamp(-1, 1)

    @torch.no_grad()
    def report(step: int) -> None:
        generator.eval()
        tokens, fake = draw(captions)
        metrics = objective.binding_metrics(real, tokens, fake=fake)
        drawn = " / ".join(f"{float(v):.1%}" for name, (v, _) in metrics.items() if name.startswith("region_binding_fake"))
        read = " / ".join(f"{float(v):.1%}" for name, (v, _) in metrics.items() if name.startswith("region_binding/"))
        judged = accuracy(judge, fake, labels)
        single = accuracy(single_judge, draw(single_captions)[1], single_labels)
        print(f"{step:>6} {judged['all']:>9.1%} {judged['first_colour']:>7.1%} / {judged['second_colour']:<7.1%}"
              f" {judged['axis']:>6.1%}   single {single['shape']:.1%} / {single['colour']:.1%} / {single['size']:.1%}"
              f" / {single['position']:.1%}   R drawn {drawn}   (R real {read})", flush=True)  # fmt: skip
        generator.train()

    print(f"teacher_probe: {args.loss}, {args.steps} steps of batch {args.batch_size}, lr {args.lr:g}; "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")  # fmt: skip
    print(f"{'step':>6} {'pairs all':>9} {'colour 1st / 2nd':>17} {'axis':>6}   single shape / colour / size / position")
    report(0)
    start = time.perf_counter()
    d, text_encoder = objective.discriminator, objective.text_encoder
    for step in range(1, args.steps + 1):
        batch = [train.caption(int(i)) for i in torch.randint(10**7, (args.batch_size,))]
        tokens = model.tokenizer.encode(batch)
        padding = tokens == PAD_ID
        with torch.no_grad():
            words, sentence = condition(tokens)
            twins = Twins.of(tokens, objective.word_pairs)
            head_words, head_sentence = text_encoder(torch.cat([tokens, twins.tokens]))  # the head's own reading
            twin_words = head_words[len(tokens) :]
            head_words, head_sentence = head_words[: len(tokens)], head_sentence[: len(tokens)]
        with frozen(d):
            fake = generator(objective.noise(len(batch), tokens.device), sentence, words, padding)
            features, regions = d.features_and_regions(fake)
            loss = objective.word_region_loss(head_words, padding, regions, twins, twin_words)
            if args.loss == "region+adv":
                adversarial = d.score(features, d.embed_text(head_sentence))
                loss = loss + losses.g_adversarial(adversarial, objective.config.adversarial_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.every == 0:
            print(f"  ({time.perf_counter() - start:.0f} s, loss {loss.item():.3f})", flush=True)
            report(step)


if __name__ == "__main__":
    main()
