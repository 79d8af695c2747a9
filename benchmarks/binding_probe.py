"""Where is binding lost? A critic trained alone, with either half of it replaced by the ground truth.

The discriminator scores an (image, caption) pair by a dot product of an image embedding and a text
embedding. Whether it can tell "a red circle left of a blue square" from its binding twin "a blue
circle left of a red square" depends on both halves. This probe trains only a critic, on real
two-object shapes scenes, with no generator, and swaps each half for an oracle read off the scene:

* text ``encoder``: M2GAN's text encoder (``--text-architecture``), as in training;
* text ``oracle``: the scene's caption as a code: each object's colour, shape and size, the
  relation, and the products of the relation with each object's attributes (which colour is on
  which side);
* text ``oracle-sum``: the same code without the products: every fact of the caption, as a sum;
* image ``discriminator``: M2GAN's discriminator's image embedding;
* image ``oracle``: each colour's, shape's and size's presence and grid position in the scene.

The critic learns from the discriminator's matching-aware hinge loss: (image, own caption) is real,
(image, another scene's caption) and (image, a binding twin of its caption) are fake. Printed:
how often it ranks each held-out image's own caption above each kind of twin (chance 50%).

``--evaluator ARCH`` (repeatable) instead asks the same of the R-precision evaluator
(:mod:`m2gan.eval.evaluator`) with that caption encoder: trained as ``callbacks.TextImageConsistency``
trains it (3,000 pairs of the default job's data, binding twins as hard negatives), its own
R-precision on real test images: single objects, two-object scenes, and with binding twins among
the candidates (``val/r_precision_binding_real``, the ceiling of ``val/r_precision_binding``).

    python benchmarks/binding_probe.py                           # the real/oracle pairings
    python benchmarks/binding_probe.py --pair encoder,oracle --text-architecture transformer
    python benchmarks/binding_probe.py --evaluator transformer --evaluator gru
    python benchmarks/binding_probe.py --pair encoder,discriminator --text-order 1   # with the text-order loss
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from m2gan import losses
from m2gan.data.datamodule import CaptionDataModule
from m2gan.data.shapes import COLOURS, SHAPES, SIZES, ShapesDataset, relation
from m2gan.eval import evaluator as ev
from m2gan.negatives import TWIN_KINDS, binding_twins
from m2gan.networks import Discriminator, TextEncoder
from m2gan.objective import Twins
from m2gan.tokenizer import SPECIAL_TOKENS

RELATIONS = ("left", "right", "above", "below")
ATTRIBUTES = (len(COLOURS), len(SHAPES), len(SIZES))
# A scene row: colour, shape, size of object 1 and of object 2, relation index, (col, row) of each.
COLOUR_1, SHAPE_1, COLOUR_2, SHAPE_2, RELATION, POSITIONS = 0, 1, 3, 4, 6, 7


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", action="append", help="TEXT,IMAGE (repeatable); default: all four of "
                        "{encoder, oracle} x {discriminator, oracle} and oracle-sum,oracle")  # fmt: skip
    parser.add_argument("--evaluator", action="append", choices=("gru", "transformer"),
                        help="probe the R-precision evaluator with this caption encoder (repeatable)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=2000, help="critic steps of batch 16")
    parser.add_argument("--train-scenes", type=int, default=4000)
    parser.add_argument("--test-scenes", type=int, default=512)
    parser.add_argument("--text-architecture", default="gru", choices=("gru", "transformer"))
    parser.add_argument("--text-order", type=float, default=0.0, metavar="WEIGHT",
                        help="also train the text encoder by the text-order loss (model.text_order_weight)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (betas 0, 0.99, as the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 steps on 64 scenes")
    args = parser.parse_args()
    if args.quick:  # both probes, tiny
        args.steps, args.train_scenes, args.test_scenes = 20, 64, 150
        args.pair = args.pair or ["encoder,discriminator", "oracle,oracle"]
        args.evaluator = args.evaluator or ["gru"]
    elif not args.evaluator:
        args.pair = args.pair or ["oracle,oracle", "oracle-sum,oracle", "encoder,oracle", "oracle,discriminator",
                                  "encoder,discriminator"]  # fmt: skip
    args.pair = args.pair or []
    return args


def load(datamodule: CaptionDataModule, split: str, count: int) -> dict:
    """Images, tokens, scene rows and binding twins of the first ``count`` scenes of ``split``."""
    dataset = datamodule.datasets[split]
    batch = datamodule.collate([dataset[i] for i in range(count)], "train")
    rows = []
    for i in range(count):
        a, b = dataset.scene(i).objects
        rows.append([a.colour, a.shape, a.size, b.colour, b.shape, b.size, RELATIONS.index(relation(a, b)),
                     a.col, a.row, b.col, b.row])  # fmt: skip
    twins = binding_twins(batch["tokens"], len(SPECIAL_TOKENS), datamodule.word_pairs)
    return {"image": batch["image"], "tokens": batch["tokens"], "paraphrase": batch["paraphrase"],
            "scene": torch.tensor(rows), "twins": twins}  # fmt: skip


def scene_twin(scene: torch.Tensor, kind: str) -> torch.Tensor:
    """The scene rows a binding twin of ``kind`` describes: colours, shapes or whole objects exchanged."""
    exchange = {"attribute": [COLOUR_1, COLOUR_2], "noun": [SHAPE_1, SHAPE_2], "relation": [0, 1, 2, 3, 4, 5]}
    columns = exchange[kind]
    half = len(columns) // 2
    twin = scene.clone()
    twin[:, columns] = scene[:, columns[half:] + columns[:half]]
    return twin


class OracleText(nn.Module):
    """A caption's facts (``products``: and which colour, shape is on which side) -> sentence vector."""

    def __init__(self, sentence_dim: int, products: bool) -> None:
        super().__init__()
        self.products = products
        facts = 2 * sum(ATTRIBUTES) + len(RELATIONS)
        self.to_sentence = nn.Linear(facts + 2 * len(RELATIONS) * sum(ATTRIBUTES[:2]), sentence_dim)

    def forward(self, scene: torch.Tensor) -> torch.Tensor:
        one_hot = [F.one_hot(scene[:, column], n).float() for column, n in zip(range(6), ATTRIBUTES * 2)]
        relation_code = F.one_hot(scene[:, RELATION], len(RELATIONS)).float()  # (B, 4)
        products = [(relation_code[:, :, None] * one_hot[c][:, None, :]).flatten(1) for c in (0, 1, 3, 4)]
        if not self.products:
            products = [torch.zeros_like(p) for p in products]
        return self.to_sentence(torch.cat([*one_hot, relation_code, *products], dim=1))


class OracleImage(nn.Module):
    """A scene's objects -> each colour's, shape's and size's presence and grid (column, row), summed over objects."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.values = sum(ATTRIBUTES)
        self.to_embedding = nn.Linear(3 * self.values, embed_dim)
        self.unconditional = nn.Linear(3 * self.values, 1)

    def forward(self, scene: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(len(scene))
        features = torch.zeros(len(scene), self.values, 3)
        for obj in (0, 1):
            column, row = (scene[:, POSITIONS + 2 * obj + k].float() - 1 for k in (0, 1))  # centred grid cell
            where = torch.stack([torch.ones(len(scene)), column, row], 1)  # (B, 3): presence, position
            offset = 0
            for attribute, n in enumerate(ATTRIBUTES):
                features[rows, offset + scene[:, 3 * obj + attribute]] += where
                offset += n
        flat = features.flatten(1)
        return self.to_embedding(flat), self.unconditional(flat).squeeze(1)


def probe(text_kind: str, image_kind: str, train: dict, test: dict, vocab: tuple[int, int], args) -> dict[str, float]:
    """Train one critic; its held-out binding accuracy per twin kind."""
    torch.manual_seed(args.seed)
    if text_kind == "encoder":
        encoder = TextEncoder(*vocab, architecture=args.text_architecture)
    else:
        encoder = OracleText(64, products=text_kind == "oracle")
    critic = Discriminator(32, 64, 32, 64, 64)  # the default job's sizes
    image_oracle = OracleImage(64) if image_kind == "oracle" else None
    modules = [m for m in (encoder, critic, image_oracle) if m is not None]
    optimizer = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=args.lr, betas=(0.0, 0.99))

    def text(data: dict, rows: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        if text_kind == "encoder":
            tokens = data["tokens"] if kind is None else data["twins"][kind][0]
            return critic.embed_text(encoder(tokens[rows])[1])
        scene = data["scene"][rows]
        return critic.embed_text(encoder(scene if kind is None else scene_twin(scene, kind)))

    def image(data: dict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image_oracle(data["scene"][rows]) if image_oracle else critic.features(data["image"][rows])

    generator = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        rows = torch.randint(len(train["scene"]), (16,), generator=generator)
        kind = TWIN_KINDS[step % len(TWIN_KINDS)]
        with_twin = rows[train["twins"][kind][1][rows]]
        features, embedding = image(train, rows), text(train, rows)
        real = critic.score(features, embedding)
        mismatched = critic.score(features, embedding.roll(1, 0))
        twin = critic.score(image(train, with_twin), text(train, with_twin, kind))
        loss = F.relu(1 - real).mean() + 0.5 * (F.relu(1 + mismatched).mean() + F.relu(1 + twin).mean())
        if text_kind == "encoder" and args.text_order > 0:
            loss = loss + args.text_order * text_order(encoder, train, rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        rows = torch.arange(len(test["scene"]))
        features = image(test, rows)
        own = critic.score(features, text(test, rows))
        accuracy = {}
        for kind in TWIN_KINDS:
            found = test["twins"][kind][1]
            other = critic.score(features, text(test, rows, kind))
            wins = (own > other).float() + 0.5 * (own == other).float()
            accuracy[kind] = float(wins[found].mean()) if found.any() else float("nan")
    return accuracy


def text_order(encoder: TextEncoder, data: dict, rows: torch.Tensor) -> torch.Tensor:
    """The text-order loss (``losses.text_contrastive``) of the captions at ``rows``: paraphrase near, twins apart."""
    found = [data["twins"][kind][1][rows].nonzero().flatten() for kind in TWIN_KINDS]
    twins = Twins(torch.cat([data["twins"][k][0][rows][f] for k, f in zip(TWIN_KINDS, found)]), torch.cat(found))
    texts = torch.cat([data["tokens"][rows], data["paraphrase"][rows], twins.tokens])
    caption, paraphrase, twin = encoder(texts)[1].split([len(rows), len(rows), len(twins.rows)])
    hard, mask = twins.per_row(twin, len(rows))
    return losses.text_contrastive(caption, paraphrase, hard, mask, 0.1)


def evaluator_ceilings(architecture: str, args) -> dict[str, float]:
    """The evaluator's own R-precision (100 candidates) on real single-object and two-object test images."""
    datamodule = CaptionDataModule(batch_size=16, train_size=51_200, val_size=16, test_size=16, resolution=32)
    tokenizer = datamodule.tokenizer
    recipe = ev.EvaluatorRecipe(text_architecture=architecture, **({"steps": 50} if args.quick else {}))
    pool = ev.training_pairs(datamodule.datasets["train"], 500 if args.quick else recipe.pool_size)
    model = ev.train_evaluator(*pool, tokenizer, recipe)
    scores = {}
    for name, share in (("single", 0.0), ("pairs", 1.0)):
        dataset = ShapesDataset("test", args.test_scenes, 32, 0, two_object_prob=share)
        captions = [dataset.caption(i) for i in range(len(dataset))]
        images = ev.embed_images(model, torch.stack([dataset.image(i) for i in range(len(dataset))]))
        sets = ev.candidate_sets(captions, 100, seed=0)
        scores[name] = ev.r_precision(images, ev.embed_captions(model, tokenizer, captions), sets)
        if name == "pairs":
            twins = ev.caption_twins(captions, tokenizer, datamodule.word_pairs)
            texts, rows, sets = ev.binding_candidate_sets(captions, twins, 100, seed=0)
            scores["binding"] = ev.r_precision(images[rows], ev.embed_captions(model, tokenizer, texts), sets)
    return scores


def main() -> None:
    args = parse_args()
    cores, threads = os.cpu_count(), torch.get_num_threads()
    if args.evaluator:
        scored = [(arch, evaluator_ceilings(arch, args)) for arch in args.evaluator]
        print(f"\nbinding_probe: the R-precision evaluator's own R-precision (100 candidates) on real test "
              f"images, {args.test_scenes} of each kind; {cores} cores, {threads} threads")  # fmt: skip
        print(f"{'caption encoder':<16} {'single':>8} {'pairs':>8} {'binding':>8}")
        for arch, scores in scored:
            print(f"{arch:<16} " + " ".join(f"{scores[k]:>8.1%}" for k in ("single", "pairs", "binding")))
    if not args.pair:
        return
    torch.manual_seed(args.seed)
    datamodule = CaptionDataModule(
        batch_size=16, train_size=args.train_scenes, val_size=args.test_scenes, test_size=16,
        two_object_prob=1.0, resolution=32, seed=args.seed,
    )  # fmt: skip
    train = load(datamodule, "train", args.train_scenes)
    test = load(datamodule, "val", args.test_scenes)
    vocab = (datamodule.vocab_size, datamodule.max_length)
    results = []
    for pair in args.pair:
        text_kind, image_kind = pair.split(",")
        start = time.perf_counter()
        results.append((text_kind, image_kind, probe(text_kind, image_kind, train, test, vocab, args),
                        time.perf_counter() - start))  # fmt: skip
    print(f"\nbinding_probe: critic alone, {args.steps} steps of 16 two-object scenes, text encoder "
          f"{args.text_architecture}, text-order weight {args.text_order:g}, lr {args.lr:g}, seed {args.seed}; {args.test_scenes} held-out scenes; "
          f"{cores} cores, {threads} threads")  # fmt: skip
    print("own caption ranked above its binding twin (chance 50%)")
    print(f"{'text':<11} {'image':<14} " + " ".join(f"{kind:>10}" for kind in TWIN_KINDS) + f" {'seconds':>8}")
    for text_kind, image_kind, accuracy, seconds in results:
        print(f"{text_kind:<11} {image_kind:<14} " + " ".join(f"{accuracy[k]:>10.1%}" for k in TWIN_KINDS)
              + f" {seconds:>8.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
