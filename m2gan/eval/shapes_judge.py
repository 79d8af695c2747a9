"""A judge for generators trained on the built-in shapes data.

An :class:`~m2gan.networks.AttributeClassifier` trained on real single-object shapes images reads
shape, colour, size and grid position off an image. Applied to images generated for held-out
captions, it tells whether the generator draws what the text asks for; its own accuracy on real
validation images says how far to trust it.

A second kind, the *pair* judge, reads two-object scenes: the shape and colour of the first and of
the second object in reading order (left before right, upper before lower) and the axis they sit
on. A generated image gets everything right only if each object has its own words' colour and
shape and the two sit as the caption's relation says: it measures whether words are bound to
their objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from m2gan.atomic import atomic_path
from m2gan.cache import cache_root, key_digest, made_once
from m2gan.data.shapes import COLOURS, SHAPES, SIZES, Background, Scene, ShapeObject, ShapesDataset, relation
from m2gan.images import to_float
from m2gan.networks import AttributeClassifier

ATTRIBUTES = {"shape": len(SHAPES), "colour": len(COLOURS), "size": len(SIZES), "position": 9}
PAIR_ATTRIBUTES = {
    "first_shape": len(SHAPES), "first_colour": len(COLOURS), "second_shape": len(SHAPES),
    "second_colour": len(COLOURS), "axis": 2,
}  # fmt: skip
JudgeKind = Literal["single", "pair"]


def reading_order(a: ShapeObject, b: ShapeObject) -> tuple[ShapeObject, ShapeObject, int]:
    """The two objects of a scene, first the left (or upper) one, and their axis: 0 side by side, 1 stacked.

    The same for "A left of B" and "B right of A": what a pair judge reads off an image.
    """
    where = relation(a, b)
    first, second = (a, b) if where in ("left", "above") else (b, a)
    return first, second, int(where in ("above", "below"))


def pair_labels(scene: Scene) -> dict[str, int]:
    """Labels of a two-object scene, keyed like :data:`PAIR_ATTRIBUTES`."""
    if len(scene.objects) != 2:
        raise ValueError("the pair judge reads two-object scenes only")
    first, second, axis = reading_order(*scene.objects)
    return {
        "first_shape": first.shape, "first_colour": first.colour, "second_shape": second.shape,
        "second_colour": second.colour, "axis": axis,
    }  # fmt: skip


def judged(kind: JudgeKind) -> dict[str, int]:
    """The attributes (name: classes) a judge of ``kind`` reads."""
    return ATTRIBUTES if kind == "single" else PAIR_ATTRIBUTES


def attribute_labels(scene: Scene) -> dict[str, int]:
    """Labels of a single-object scene, keyed like :data:`ATTRIBUTES`."""
    if len(scene.objects) != 1:
        raise ValueError("the judge reads single-object scenes only")
    obj = scene.objects[0]
    return {"shape": obj.shape, "colour": obj.colour, "size": obj.size, "position": obj.cell}


def scene_labels(
    dataset: ShapesDataset, count: int | Sequence[int], kind: JudgeKind = "single"
) -> dict[str, torch.Tensor]:
    """Labels (each (N,) long) of the first ``count`` samples (or of the samples at the indices
    ``count``) of a single-object (or, for ``kind="pair"``, a two-object) ``dataset``."""
    needed = 0.0 if kind == "single" else 1.0
    if dataset.two_object_prob != needed:
        raise ValueError(f"the {kind} judge needs a dataset with two_object_prob={needed:g}")
    labels_of = attribute_labels if kind == "single" else pair_labels
    rows = [labels_of(dataset.scene(i)) for i in (range(count) if isinstance(count, int) else count)]
    return {name: torch.tensor([r[name] for r in rows]) for name in judged(kind)}


def labelled_images(
    dataset: ShapesDataset, count: int, kind: JudgeKind = "single"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The first ``count`` images of ``dataset`` and their labels (see :func:`scene_labels`)."""
    labels = scene_labels(dataset, count, kind)
    return torch.stack([dataset.image(i) for i in range(count)]), labels


@torch.no_grad()
def accuracy(
    classifier: AttributeClassifier, images: torch.Tensor, labels: dict[str, torch.Tensor], batch_size: int = 256
) -> dict[str, float]:
    """Fraction of images whose predicted attribute equals the label, per attribute.

    ``images`` are float in [-1, 1] or uint8 in [0, 255], (N, 3, H, W).
    """
    classifier.eval()
    images = to_float(images)
    device = next(classifier.parameters()).device
    right = {name: torch.zeros(images.shape[0], dtype=torch.bool) for name in labels}
    for start in range(0, images.shape[0], batch_size):
        logits = classifier(images[start : start + batch_size].to(device))
        for name in labels:
            right[name][start : start + batch_size] = (
                logits[name].argmax(1).cpu() == labels[name][start : start + batch_size]
            )
    scores = {name: hits.float().mean().item() for name, hits in right.items()}
    scores["all"] = torch.stack(list(right.values())).all(0).float().mean().item()  # every attribute of an image
    return scores


@dataclasses.dataclass(frozen=True)
class JudgeRecipe:
    """How a judge is trained by :func:`train_judge`; also its cache key."""

    resolution: int = 32
    pool_size: int = 6_000
    """Real single-object images it learns from."""
    steps: int = 500
    batch_size: int = 64
    seed: int = 1234
    """Seed of the pool and the training: its own, so it shares no sample with a generator's data."""
    lr: float = 3e-3
    kind: JudgeKind = "single"
    """``"single"``: one-object scenes (:data:`ATTRIBUTES`); ``"pair"``: two-object scenes (:data:`PAIR_ATTRIBUTES`)."""
    background: Background = "gradient"
    """The backgrounds it learns on: those of the data it will judge."""


SMOKE_RECIPE = {"pool_size": 1000, "steps": 60}
"""A rougher judge, trained in seconds, for smoke runs and tests (``JudgeRecipe(**SMOKE_RECIPE)``)."""


def train_judge(recipe: JudgeRecipe = JudgeRecipe()) -> AttributeClassifier:
    """Train an attribute classifier on ``recipe.pool_size`` real single-object images (CPU, about a minute at 32 px).

    The pool comes from the shapes data with the recipe's own ``seed``, so it shares no sample with
    a generator's training data at the default seed.
    """
    generator = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    two_objects = 0.0 if recipe.kind == "single" else 1.0
    pool = ShapesDataset(
        "train", recipe.pool_size, recipe.resolution, recipe.seed, two_object_prob=two_objects, background=recipe.background
    )
    images, labels = labelled_images(pool, recipe.pool_size, recipe.kind)
    classifier = AttributeClassifier(judged(recipe.kind))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=recipe.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.steps)
    classifier.train()
    for _ in range(recipe.steps):
        index = torch.randint(recipe.pool_size, (recipe.batch_size,), generator=generator)
        loss = classifier.loss(images[index], {name: value[index] for name, value in labels.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return classifier.eval()


def save_judge(classifier: AttributeClassifier, path: str | os.PathLike, resolution: int) -> None:
    """Write a judge as safetensors, its attributes and resolution in the header (no pickle)."""
    attributes = {name: head.out_features for name, head in classifier.heads.items()}
    metadata = {"attributes": json.dumps(attributes), "resolution": str(resolution)}
    with atomic_path(path) as temporary:
        save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(temporary), metadata=metadata)


def load_judge(path: str | os.PathLike, kind: JudgeKind = "single") -> tuple[AttributeClassifier, int]:
    """Read a judge written by :func:`save_judge`; returns it (in eval mode) and its image resolution.

    Raises:
        ValueError: The file is not a judge of the current shapes attributes.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        state = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path}: not a readable shapes judge ({error})") from None
    if json.loads(metadata.get("attributes", "null")) != judged(kind):
        raise ValueError(f"{path}: judges other attributes than {judged(kind)}; delete it to retrain")
    classifier = AttributeClassifier(judged(kind))
    classifier.load_state_dict(state)
    return classifier.eval(), int(metadata["resolution"])


def judge_file(recipe: JudgeRecipe = JudgeRecipe(), cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the judge trained by ``recipe``, training and caching it on first use (about a minute at 32 px).

    The cache key holds the recipe and a digest of a few rendered images, so a change to the
    shapes renderer retrains the judge instead of trusting a stale one.
    """
    probe = torch.stack([ShapesDataset("train", 4, recipe.resolution, recipe.seed).image(i) for i in range(4)])
    key = key_digest(
        {
            **dataclasses.asdict(recipe),
            "attributes": judged(recipe.kind),
            "probe": hashlib.sha256(probe.numpy().tobytes()).hexdigest(),
        }
    )
    name = f"shapes-{'pair-' if recipe.kind == 'pair' else ''}judge-{recipe.resolution}px-{key}.safetensors"
    path = Path(cache_dir or cache_root()) / "judges" / name
    return made_once(path, lambda path: save_judge(train_judge(recipe), path, recipe.resolution))
