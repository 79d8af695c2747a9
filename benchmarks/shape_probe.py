"""Which shapes does a generator get wrong, and does its critic tell them apart? (issue 37: what limits shape)

For ``--images`` single-object test captions of the shapes data (``quality_shapes.py --seed S``'s
scenes), each checkpoint's EMA generator draws one image per caption and the shapes judge reads
it. Printed per checkpoint: the confusion matrix of asked shape (rows) against the shape the judge
reads (columns), and shape accuracy per size, beside the judge's on the real images (its ceiling).

For a training checkpoint (``.ckpt``), where the signal for each pair of shapes stops, on the real
test images whose caption names one of the two by its plain word:

* ``critic``: how often the discriminator scores the image's caption above the same caption with
  the two shape words exchanged ("a red circle …" vs "a red square …"; ties half);
* ``text``: the EMA sentence vectors' distance between the two captions, over the distance to
  another caption (what the generator is conditioned on);
* ``features``: held-out accuracy of a linear probe telling the two shapes apart from the critic's
  4×4 feature map and from its 64-wide image embedding (what its projection head reads), trained
  on 70% of those images: does the critic's image side carry the difference at all?

``wrong drawings``: for each checkpoint's drawings of the wrong shape (asked A, the judge reads B),
how often its critic still scores the caption naming A above the same caption naming B. Near 100%
the critic is fooled by those drawings (it cannot teach the fix); near 0% it reads them as the
judge does and the generator has not followed.

``--critic-alone STEPS`` asks whether the critic *can* learn the difference: a fresh default-job
model's critic and text encoder train alone on real batches of the default data (no generator),
with the discriminator's matching-aware hinge (mismatched and swapped captions as fakes, weights
as configured) and its contrastive loss, and the table above is printed every ``STEPS / 4`` steps
(``--swap-from-corpus``: the swapped captions take their word from the corpus; ``--swap-candidates
K``: the critic is shown the hardest of K swaps, ``model.objective.swap_candidates``; ``--focus
A,B``: every caption naming A or B is swapped by exchanging the two, a probe of what the critic
learns when asked about one pair often).

``--mined K`` (with a default-job ``.ckpt``) prints which word exchanges mining picks with that
checkpoint's critic (and its captioner filter, ``swap_captioner_margin``), the hardest of K corpus
swaps on 40 training batches, and the share that only trade a word for its synonym.

    python benchmarks/shape_probe.py runs/m2gan/<run>/checkpoints/last.ckpt --seed 0 [--mined 8]
    python benchmarks/shape_probe.py --critic-alone 3200 [--swap-from-corpus] [--swap-candidates 8] [--focus circle,square] --seed 0
    python benchmarks/shape_probe.py --quick      # a smoke run: an untrained model, 60 captions, a rough judge
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from focus_train import exchange  # benchmarks/focus_train.py
from smoke import untrained_model  # benchmarks/smoke.py

import m2gan
from m2gan import losses
from m2gan.data import CaptionDataModule
from m2gan.data.shapes import _SYNONYMS, SHAPES, SIZES, ShapesDataset
from m2gan.eval.shapes_judge import SMOKE_RECIPE, JudgeRecipe, judge_file, load_judge, scene_labels
from m2gan.images import to_float
from m2gan.model import M2GAN
from m2gan.networks import TextEncoder
from m2gan.objective import wins
from m2gan.settings import overridden


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help="training checkpoints or exports of 32 px shapes runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--critic-alone", type=int, metavar="STEPS", help="train a fresh critic alone on real batches")
    parser.add_argument("--swap-from-corpus", action="store_true", help="with --critic-alone: corpus swaps")
    parser.add_argument("--swap-candidates", type=int, default=1, help="with --critic-alone: the hardest of N swaps")
    parser.add_argument("--mined", type=int, metavar="K", help="per .ckpt: which swaps mining picks, the hardest of K")
    parser.add_argument(
        "--focus",
        metavar="A,B",
        help="with --critic-alone: a caption holding word A or B is "
        "swapped by exchanging the two (every such caption's hard negative names the other)",
    )
    parser.add_argument("--probe-steps", type=int, default=1500, help="training steps of each linear probe")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: an untrained model, 60 captions, a rough judge"
    )
    return parser.parse_args()


def critic_alone(steps: int, from_corpus: bool, seed: int, captions: list[str], images: torch.Tensor,
                 shapes: torch.Tensor, probe_steps: int, reports: int = 4, focus: str | None = None,
                 candidates: int = 1, **data_overrides) -> None:  # fmt: skip
    """Train the default job's critic and text encoder on real batches only; print its reading
    ``reports`` times as it learns (``data_overrides``: the default data's settings changed;
    ``focus`` "A,B": captions holding A or B get the two exchanged as their swapped caption;
    ``candidates``: the objective's ``swap_candidates``, the hardest of this many swaps)."""
    torch.manual_seed(seed)
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "default.yaml").read_text())
    data = CaptionDataModule(**{**config["data"], **data_overrides})
    data.setup("fit")
    model = M2GAN(**overridden(config["model"], vocab_size=data.vocab_size, max_length=data.max_length,
                               swap_from_corpus=from_corpus, swap_candidates=candidates))  # fmt: skip
    model.set_tokenizer(data.tokenizer)
    model.objective.word_pairs = data.word_pairs
    cfg, d, encoder = model.settings.objective, model.discriminator, model.text_encoder
    optimizer = torch.optim.Adam([*d.parameters(), *encoder.parameters()], lr=model.settings.discriminator.lr_d,
                                 betas=model.settings.training.betas)  # fmt: skip
    batches = iter(data.train_dataloader())
    focus_ids = model.tokenizer.encode([focus.replace(",", " ")])[0, 1:3].tolist() if focus else None
    hardest = f", the hardest of {candidates}" if candidates > 1 else ""
    print(
        f"\ncritic alone, {'corpus' if from_corpus else 'batch'} swaps{hardest}{f', {focus} exchanged' if focus else ''}, "
        f"{steps} steps of {data.hparams.batch_size} real pairs"
    )
    for step in range(1, steps + 1):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(data.train_dataloader())
            batch = next(batches)
        tokens = batch["tokens"]
        if candidates > 1:
            swapped = model.objective.hardest_swaps(tokens, batch["image"], d.features(batch["image"]))
        else:
            swapped = model.objective.swaps(tokens)
        if focus_ids is not None:
            swapped = exchange(tokens, swapped, *focus_ids)
        _, sentences = encoder(torch.cat([tokens, swapped]))
        text, swapped_text = d.embed_text(sentences).split(len(tokens))
        features = d.features(batch["image"])
        real = d.score(features, text)
        negatives = [
            (d.score(features, text.roll(1, 0)), cfg.mismatch_weight),
            (d.score(features, swapped_text), cfg.swap_weight),
        ]
        loss = losses.d_adversarial(real, negatives, cfg.adversarial_loss)
        loss = loss + cfg.contrastive_weight_d * losses.contrastive(
            features[0], text, cfg.contrastive_temperature, swapped_text
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % max(steps // reports, 1) == 0:
            print(f"  step {step}:")
            critic_reading(model.eval(), captions, images, shapes, probe_steps, conditioning=encoder)
            model.train()


@torch.no_grad()
def wrong_drawings(
    model: M2GAN, captions: list[str], drawn: torch.Tensor, asked: torch.Tensor, read: torch.Tensor
) -> None:
    """For drawings of the wrong shape (the judge reads ``read``, the caption asked ``asked``), how
    often the critic still scores the asked caption above the same caption naming the shape drawn:
    high means the critic is fooled on drawings (it cannot teach the fix), low means it reads the
    drawing and the generator does not follow. Captions naming the asked shape by a synonym are skipped."""
    d = model.discriminator
    print(f"  {'wrong drawings (asked -> drawn)':<32} {'count':>6} {'critic prefers the asked caption':>33}")
    for a, b in itertools.permutations(range(len(SHAPES)), 2):
        rows = [
            i for i in ((asked == a) & (read == b)).nonzero().flatten().tolist() if SHAPES[a] in captions[i].split()
        ]
        if len(rows) < 10:
            continue
        features = d.features(to_float(drawn[rows]))
        own = d.score(
            features, d.embed_text(model.text_encoder(model.tokenizer.encode([captions[i] for i in rows]))[1])
        )
        named = model.tokenizer.encode([exchanged(captions[i], SHAPES[a], SHAPES[b]) for i in rows])
        other = d.score(features, d.embed_text(model.text_encoder(named)[1]))
        print(f"  {SHAPES[a] + ' -> ' + SHAPES[b]:<32} {len(rows):>6} {wins(own, other).mean():>33.1%}")


@torch.no_grad()
def mined_swaps(model: M2GAN, candidates: int, seed: int, batches: int = 40) -> None:
    """Print which word exchanges mining picks (the checkpoint's critic and captioner filter, the
    hardest of ``candidates`` corpus swaps) on ``batches`` training batches of the default data, and
    the share that only trade a word for its synonym in the shapes data (false negatives)."""
    settings = dataclasses.replace(model.objective.config, swap_candidates=candidates, swap_from_corpus=True)
    model.objective.config = settings
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "default.yaml").read_text())
    data = CaptionDataModule(**config["data"])  # the default job's vocabulary and word pairs
    data.setup("fit")
    if data.tokenizer.vocabulary() != model.tokenizer.vocabulary():
        raise SystemExit("shape_probe.py: --mined reads default-job checkpoints (another vocabulary here)")
    model.objective.word_pairs = data.word_pairs
    synonyms = {
        (a, b) for names in _SYNONYMS.values() for x in names for y in names for a, b in zip(x.split(), y.split())
    }
    exchanges = collections.Counter()
    torch.manual_seed(seed)
    for batch in itertools.islice(data.train_dataloader(), batches):
        tokens = batch["tokens"]
        chosen = model.objective.hardest_swaps(tokens, batch["image"], model.discriminator.features(batch["image"]))
        for row, swap in zip(tokens, chosen):
            at = (row != swap).nonzero().flatten()
            exchanges[tuple(model.tokenizer.words([row[at[0]], swap[at[0]]])) if len(at) else ("-", "-")] += 1
    total = sum(exchanges.values())
    share = sum(n for pair, n in exchanges.items() if pair in synonyms and pair[0] != pair[1]) / total
    print(f"  mined swaps (hardest of {candidates}, captioner margin {settings.swap_captioner_margin}): "
          f"{share:.1%} trade a word for its synonym; circle <-> square "
          f"{(exchanges[('circle', 'square')] + exchanges[('square', 'circle')]) / total:.1%}; most often: "
          + ", ".join(f"{a}->{b} {n / total:.1%}" for (a, b), n in exchanges.most_common(8)))  # fmt: skip


@torch.no_grad()
def read_shapes(judge, images: torch.Tensor) -> torch.Tensor:
    """(N,) the judge's shape class of each image."""
    return torch.cat([judge(to_float(images[i : i + 500]))["shape"].argmax(1) for i in range(0, len(images), 500)])


def report(name: str, asked: torch.Tensor, read: torch.Tensor, sizes: torch.Tensor) -> None:
    print(f"\n{name}: shape right {(asked == read).float().mean():.1%}")
    print(f"{'asked / read':>14} " + " ".join(f"{s:>9}" for s in SHAPES) + f" {'right':>7}")
    for k, shape in enumerate(SHAPES):
        rows = read[asked == k]
        counts = torch.bincount(rows, minlength=len(SHAPES)).float() / max(len(rows), 1)
        print(f"{shape:>14} " + " ".join(f"{c:>9.1%}" for c in counts) + f" {counts[k]:>7.1%}")
    print("  per size: " + "; ".join(
        f"{size} {(asked == read)[sizes == k].float().mean():.1%}" for k, size in enumerate(SIZES)))  # fmt: skip


def exchanged(caption: str, a: str, b: str) -> str:
    return " ".join(b if word == a else a if word == b else word for word in caption.split())


def linear_probe(features: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """Held-out accuracy of a logistic regression on standardised ``features`` (N, D), binary ``labels``."""
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    n = int(0.7 * len(features))
    weight = torch.zeros(features.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        logits = features[:n] @ weight + bias
        loss = F.binary_cross_entropy_with_logits(logits, labels[:n]) + 1e-3 * weight.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return ((features[n:] @ weight + bias > 0).float() == labels[n:]).float().mean().item()


@torch.no_grad()
def critic_reading(
    model: M2GAN,
    captions: list[str],
    images: torch.Tensor,
    shapes: torch.Tensor,
    probe_steps: int,
    conditioning: TextEncoder | None = None,
) -> None:
    """Print, per pair of shapes, the critic's and the conditioning's reading of the two shape words,
    and whether the critic's image features carry the difference (see the module docstring).
    ``conditioning``: the text encoder whose sentences the "text" column compares (default: the EMA one)."""
    d, conditioning_encoder = model.discriminator, conditioning or model.ema.text_encoder
    tokens = model.tokenizer.encode(captions)
    _, sentence = model.text_encoder(tokens)
    _, conditioning = conditioning_encoder(tokens)
    feature_map = F.leaky_relu(d.blocks(d.from_rgb(images)), 0.2).flatten(1)  # (N, C * 16)
    features = d.features(images)
    own = d.score(features, d.embed_text(sentence))
    other = (conditioning - conditioning.roll(1, 0)).norm(dim=1).mean()
    print(f"  {'shapes':<20} {'critic':>7} {'text':>6} {'features: 4x4 map / embedding':>31}")
    for a, b in itertools.combinations(range(len(SHAPES)), 2):
        names = SHAPES[a], SHAPES[b]
        rows = [i for i, caption in enumerate(captions) if set(caption.split()) & set(names)]
        if not rows:
            continue
        swapped = model.tokenizer.encode([exchanged(captions[i], *names) for i in rows])
        _, swapped_sentence = model.text_encoder(swapped)
        _, swapped_conditioning = conditioning_encoder(swapped)
        subset = tuple(part[rows] for part in features)
        critic = wins(own[rows], d.score(subset, d.embed_text(swapped_sentence))).mean().item()
        text = ((conditioning[rows] - swapped_conditioning).norm(dim=1).mean() / other).item()
        pair = (shapes == a) | (shapes == b)
        labels = (shapes[pair] == b).float()
        with torch.enable_grad():
            probes = [linear_probe(f[pair], labels, probe_steps) for f in (feature_map, features[0])]
        print(f"  {' / '.join(names):<20} {critic:>7.1%} {text:>6.2f} {probes[0]:>20.1%} / {probes[1]:.1%}")


def main() -> None:
    args = parse_args()
    if not args.checkpoints and not args.quick and not args.critic_alone:
        raise SystemExit("shape_probe.py: name at least one checkpoint (or --critic-alone STEPS, or --quick)")
    if args.quick:  # both paths, briefly
        args.images, args.critic_alone, args.probe_steps, args.mined = 60, args.critic_alone or 2, 20, args.mined or 2
    print(f"shape_probe: {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    data = ShapesDataset("test", 10**6, 32, seed=args.seed, two_object_prob=0.0)
    indices = list(range(args.images))
    captions = [data.caption(i) for i in indices]
    labels = scene_labels(data, indices)
    asked, sizes = labels["shape"], labels["size"]
    real = torch.stack([data.image(i) for i in indices])
    runs = [(path, path) for path in args.checkpoints] or ([("untrained", None)] if args.quick else [])
    if runs:
        judge, _ = load_judge(judge_file(JudgeRecipe(**SMOKE_RECIPE) if args.quick else JudgeRecipe()))
        report("real images (the judge's ceiling)", asked, read_shapes(judge, real), sizes)
    for name, path in runs:
        model = untrained_model() if path is None else (M2GAN.load(path).eval() if path.endswith(".ckpt") else None)
        pipeline = model.ema if model is not None else m2gan.load(path)
        chunks = range(0, len(captions), 250)
        drawn = torch.cat([pipeline.generate(captions[i : i + 250], seed=args.seed + i) for i in chunks])
        read = read_shapes(judge, drawn)
        report(name[-70:], asked, read, sizes)
        if model is not None:
            critic_reading(model, captions, real, asked, args.probe_steps)
            wrong_drawings(model, captions, drawn, asked, read)
        if model is not None and args.mined:
            mined_swaps(model, args.mined, args.seed, batches=2 if args.quick else 40)
    if args.critic_alone:
        quick = {"reports": 1, "train_size": 2000, "val_size": 50} if args.quick else {}
        critic_alone(args.critic_alone, args.swap_from_corpus, args.seed, captions, real, asked, args.probe_steps,
                     focus=args.focus, candidates=args.swap_candidates, **quick)  # fmt: skip


if __name__ == "__main__":
    main()
