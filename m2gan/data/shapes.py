"""The built-in ``shapes`` dataset: procedurally rendered scenes with varied captions.

Each sample is one or two objects (a shape with a colour and a size, in one cell of a 3×3 grid)
on a background that is a random dark gradient, sometimes with grain (or, with
``background="black"``, plain black: most pixels at the bottom of the range, a known trap for
generators). Its caption is drawn from
several templates and synonyms. Everything is a pure function of ``(seed, split, index)``, so the
dataset needs no download, no disk and no state, and its ground-truth attributes are always known:
they are what judges a generator trained on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from m2gan.data.captioned import SPLITS

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan", "white")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")
Background = Literal["gradient", "black"]

# Mean RGB of each colour in [0, 1]; each object jitters around it a little.
_RGB = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.78, 0.18),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.96, 0.90, 0.10),
    "purple": (0.62, 0.15, 0.85),
    "cyan": (0.10, 0.85, 0.90),
    "white": (0.96, 0.96, 0.96),
}
# Object radius as a fraction of the image side; a large object about fills one grid cell.
_RADIUS = {"small": 0.11, "large": 0.17}
# Supersampling factor: each pixel averages this many sub-samples per axis (anti-aliasing).
_SUPERSAMPLE = 4

_SYNONYMS = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "square"),
    "triangle": ("triangle", "triangle"),
    "cross": ("cross", "plus sign", "cross"),
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "purple": ("purple", "violet"),
    "cyan": ("cyan", "turquoise"),
    "white": ("white",),
    "small": ("small", "little", "tiny"),
    "large": ("large", "big", "huge"),
}
_PLACES = {
    ("top", "left"): ("in the top left", "at the upper left", "in the top left corner"),
    ("top", "centre"): ("at the top", "in the top middle", "at the top centre"),
    ("top", "right"): ("in the top right", "at the upper right", "in the top right corner"),
    ("middle", "left"): ("on the left", "at the left", "at the left side"),
    ("middle", "centre"): ("in the centre", "in the middle", "at the center"),
    ("middle", "right"): ("on the right", "at the right", "at the right side"),
    ("bottom", "left"): ("in the bottom left", "at the lower left", "in the bottom left corner"),
    ("bottom", "centre"): ("at the bottom", "in the bottom middle", "at the bottom centre"),
    ("bottom", "right"): ("in the bottom right", "at the lower right", "in the bottom right corner"),
}
_ONE_OBJECT = (
    "a {obj} {place}",
    "there is a {obj} {place}",
    "{place} there is a {obj}",
    "a picture of a {obj} {place}",
    "{place} , a {obj}",
)
_TWO_OBJECTS = (
    "a {obj1} {rel} a {obj2}",
    "there is a {obj1} {rel} a {obj2}",
    "a picture of a {obj1} {rel} a {obj2}",
)
_RELATIONS = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene, as indices into the attribute tables.

    Attributes:
        shape: Index into :data:`SHAPES`.
        colour: Index into :data:`COLOURS`.
        size: Index into :data:`SIZES`.
        row: Grid row, index into :data:`ROWS`.
        col: Grid column, index into :data:`COLS`.
    """

    shape: int
    colour: int
    size: int
    row: int
    col: int

    @property
    def cell(self) -> int:
        """Grid cell ``row * 3 + col`` (0 = top left, 8 = bottom right)."""
        return self.row * 3 + self.col


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one sample: objects and background."""

    objects: tuple[ShapeObject, ...]
    background: tuple[tuple[float, float, float], tuple[float, float, float], float, float]
    """(start colour, end colour, gradient angle in radians, grain strength)."""
    jitter: tuple[tuple[float, float, float, float, float], ...]
    """Per object: (dx, dy) offset from the cell centre, as fractions of the side, and RGB jitter."""


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    # One independent stream per (seed, split, index, purpose): the caption of a sample never
    # depends on how many random numbers its rendering drew.
    return np.random.default_rng([seed, SPLITS.index(split), index, stream])


def parse_combinations(names: Sequence[str]) -> frozenset[tuple[int, int]]:
    """(colour, shape) index pairs from names such as ``"purple triangle"``; a clear error for others."""
    combinations = set()
    for name in names:
        words = name.split()
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
            raise ValueError(
                f"held-out combination {name!r} is not '<colour> <shape>' with a colour of {COLOURS} "
                f"and a shape of {SHAPES}"
            )
        combinations.add((COLOURS.index(words[0]), SHAPES.index(words[1])))
    return frozenset(combinations)


def sample_scene(
    seed: int,
    split: str,
    index: int,
    two_object_prob: float,
    excluded: frozenset[tuple[int, int]] = frozenset(),
    background: Background = "gradient",
) -> Scene:
    """Draw the scene of one sample; a pure function of its arguments.

    An object whose (colour, shape) is ``excluded`` redraws its colour until it is not, so no
    object of the scene shows an excluded combination (a scene without one draws as if none were).
    A ``"black"`` background draws the same objects as the gradient one, on black without grain.
    """
    rng = _rng(seed, split, index, 0)
    n = 2 if rng.random() < two_object_prob else 1
    cells = rng.choice(9, size=n, replace=False)
    objects = []
    for cell in cells:
        shape, colour = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS)))
        while (colour, shape) in excluded:
            colour = int(rng.integers(len(COLOURS)))
        size = int(rng.integers(len(SIZES)))
        objects.append(ShapeObject(shape=shape, colour=colour, size=size, row=int(cell) // 3, col=int(cell) % 3))
    objects = tuple(objects)
    jitter = tuple((*(rng.uniform(-0.025, 0.025, size=2)), *(rng.uniform(-0.05, 0.05, size=3))) for _ in objects)
    # A dark, weakly saturated background keeps every object colour, white included, readable.
    grey = rng.uniform(0.05, 0.35, size=2)
    tint = rng.uniform(-0.06, 0.06, size=(2, 3))
    start, end = (tuple(np.clip(grey[i] + tint[i], 0, 1).tolist()) for i in range(2))
    grain = float(rng.uniform(0.0, 0.04)) if rng.random() < 0.5 else 0.0
    if background == "black":
        start = end = (0.0, 0.0, 0.0)
        grain = 0.0
    return Scene(objects, (start, end, float(rng.uniform(0, 2 * np.pi)), grain), jitter)


def _describe_object(obj: ShapeObject, rng: np.random.Generator) -> str:
    def pick(key: str) -> str:
        options = _SYNONYMS[key]
        return options[rng.integers(len(options))]

    return f"{pick(SIZES[obj.size])} {pick(COLOURS[obj.colour])} {pick(SHAPES[obj.shape])}"


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b``: "left", "right", "above" or "below" (the caption's relation).

    The axis with the larger grid distance names the relation; ties go to left/right.
    """
    dr, dc = b.row - a.row, b.col - a.col
    if abs(dc) >= abs(dr):
        return "left" if dc > 0 else "right"
    return "above" if dr > 0 else "below"


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """Write one caption of ``scene``, choosing template and synonyms with ``rng``."""
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        places = _PLACES[(ROWS[obj.row], COLS[obj.col])]
        template = _ONE_OBJECT[rng.integers(len(_ONE_OBJECT))]
        return template.format(obj=_describe_object(obj, rng), place=places[rng.integers(len(places))])
    a, b = scene.objects
    relations = _RELATIONS[relation(a, b)]
    template = _TWO_OBJECTS[rng.integers(len(_TWO_OBJECTS))]
    return template.format(
        obj1=_describe_object(a, rng), rel=relations[rng.integers(len(relations))], obj2=_describe_object(b, rng)
    )


def named_attributes(caption: str) -> dict[str, list[int]]:
    """Shapes, colours and sizes a caption names, in order of mention, as indices into :data:`SHAPES` /
    :data:`COLOURS` / :data:`SIZES`.

    Reads any of the synonyms the captions are written with ("disc", "plus sign", "violet", …).
    """
    text = f" {' '.join(caption.lower().split())} "
    found: dict[str, list[tuple[int, int]]] = {"shape": [], "colour": [], "size": []}
    for attribute, names in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES)):
        for value, name in enumerate(names):
            for word in set(_SYNONYMS[name]):
                start = text.find(f" {word} ")
                while start >= 0:
                    found[attribute].append((start, value))
                    start = text.find(f" {word} ", start + 1)
    return {attribute: [value for _, value in sorted(hits)] for attribute, hits in found.items()}


def named_relation(caption: str) -> str | None:
    """The relation a two-object caption names ("left", "right", "above", "below"), or None if none or several."""
    text = f" {' '.join(caption.lower().split())} "
    named = {where for where, phrases in _RELATIONS.items() for phrase in phrases if f" {phrase} " in text}
    return named.pop() if len(named) == 1 else None


def _coverage(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-radius shape at sub-pixel offsets (u right, v down)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if shape == "triangle":  # apex up, base down
        return (v >= -0.9) & (v <= 0.8) & (np.abs(u) <= (v + 0.9) * 0.62)
    if shape == "cross":
        arm, half = np.abs(u) <= 0.33, np.abs(v) <= 0.33
        return (arm & (np.abs(v) <= 1.0)) | (half & (np.abs(u) <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """Render ``scene`` as a float32 array (3, H, W) in [0, 1]; ``rng`` draws the grain."""
    start, end, angle, grain = scene.background
    centres = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    y, x = np.meshgrid(centres, centres, indexing="ij")  # (H, W)
    t = (np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5)) / np.sqrt(0.5) + 0.5
    t = np.clip(t, 0.0, 1.0)[None]  # (1, H, W)
    image = (1 - t) * np.asarray(start, np.float32)[:, None, None] + t * np.asarray(end, np.float32)[:, None, None]

    s = _SUPERSAMPLE
    for obj, (dx, dy, *rgb_jitter) in zip(scene.objects, scene.jitter):
        cx, cy = (obj.col + 0.5) / 3 + dx, (obj.row + 0.5) / 3 + dy
        radius = _RADIUS[SIZES[obj.size]]
        # Only the pixels of the object's bounding box are supersampled.
        x0 = max(0, int(np.floor((cx - radius) * resolution)) - 1)
        y0 = max(0, int(np.floor((cy - radius) * resolution)) - 1)
        x1 = min(resolution, int(np.ceil((cx + radius) * resolution)) + 1)
        y1 = min(resolution, int(np.ceil((cy + radius) * resolution)) + 1)
        sub_x = (x0 * s + np.arange((x1 - x0) * s, dtype=np.float32) + 0.5) / (resolution * s)
        sub_y = (y0 * s + np.arange((y1 - y0) * s, dtype=np.float32) + 0.5) / (resolution * s)
        v, u = np.meshgrid((sub_y - cy) / radius, (sub_x - cx) / radius, indexing="ij")
        mask = _coverage(SHAPES[obj.shape], u, v).astype(np.float32)
        alpha = mask.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))[None]  # coverage per pixel
        colour = np.clip(np.asarray(_RGB[COLOURS[obj.colour]]) + rgb_jitter, 0, 1).astype(np.float32)
        patch = image[:, y0:y1, x0:x1]
        image[:, y0:y1, x0:x1] = alpha * colour[:, None, None] + (1 - alpha) * patch

    if grain > 0:
        image = image + rng.normal(0.0, grain, size=(1, resolution, resolution)).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


class ShapesDataset(Dataset):
    """Procedural image-caption pairs of coloured shapes.

    Each item is ``{"image": (3, H, W) float in [-1, 1], "caption": str, "paraphrase": str, "index": int}``
    (the paraphrase: the scene's second reference caption). The same
    ``(seed, split, index)`` always gives the same image and caption; splits draw from
    independent random streams, so they never share a sample.

    Args:
        split: One of ``"train"``, ``"val"``, ``"test"``.
        size: Number of samples (a virtual length: nothing is stored).
        resolution: Image side in pixels.
        seed: Dataset seed.
        two_object_prob: Probability that a scene holds two objects instead of one.
        held_out: (colour, shape) combinations such as ``"purple triangle"`` that the training
            split never shows, in any scene or position (its objects redraw their colour); the
            other splits show them, so a model can be asked for what it never saw.
        background: ``"gradient"`` (dark, random) or ``"black"``; the objects and captions are the same.
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 10_000,
        resolution: int = 32,
        seed: int = 0,
        two_object_prob: float = 0.25,
        held_out: Sequence[str] = (),
        background: Background = "gradient",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if resolution < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {resolution}")
        if not 0.0 <= two_object_prob <= 1.0:
            raise ValueError(f"two_object_prob must lie in [0, 1], got {two_object_prob}")
        self.split, self.size, self.resolution = split, size, resolution
        if background not in ("gradient", "black"):
            raise ValueError(f"background must be 'gradient' or 'black', got {background!r}")
        self.seed, self.two_object_prob, self.background = seed, two_object_prob, background
        excluded = parse_combinations(held_out)
        self._excluded = excluded if split == "train" else frozenset()

    def __len__(self) -> int:
        return self.size

    @property
    def fingerprint(self) -> str:
        """What the samples depend on (not the split's length: sample i is the same for any size).

        Caches of derived data (FID's real features) are keyed by it.
        """
        return (
            f"shapes(split={self.split}, resolution={self.resolution}, seed={self.seed}, "
            f"two_object_prob={self.two_object_prob}"
            + (f", excluded={sorted(self._excluded)}" if self._excluded else "")
            + (f", background={self.background})" if self.background != "gradient" else ")")
        )

    def _check(self, index: int) -> int:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a {self.split} split of {self.size} samples")
        return int(index)

    def scene(self, index: int) -> Scene:
        """The scene (objects, background) of sample ``index``: its ground truth."""
        index = self._check(index)
        return sample_scene(self.seed, self.split, index, self.two_object_prob, self._excluded, self.background)

    def caption(self, index: int) -> str:
        """The caption paired with sample ``index`` in training."""
        return self._caption(self.scene(index), index)

    def references(self, index: int, count: int = 5) -> list[str]:
        """``count`` captions of sample ``index`` (the first is :meth:`caption`), for caption metrics."""
        scene = self.scene(index)
        return [self._caption(scene, index, k) for k in range(count)]

    def image(self, index: int) -> torch.Tensor:
        """The image of sample ``index``, (3, H, W) float in [-1, 1]."""
        return self._image(self.scene(index), index)

    def renditions(self, index: int, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` other real images that sample ``index``'s caption describes equally well, (count, 3, H, W)
        in [-1, 1]: the spread a generator drawing that caption many times should reach.

        What a caption fixes stays (each object's shape, colour and size; one object's grid cell, or
        two objects' relation); the rest is drawn anew from ``seed``: the background, the jitter of
        position and colour, the grain, and for two objects any pair of cells in the same relation.
        """
        scene = self.scene(index)
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index, 3, seed])
        two = len(scene.objects) == 2
        images = []
        for _ in range(count):
            # A scene of as many objects, for its background and jitter.
            other = sample_scene(int(rng.integers(2**31)), self.split, index, float(two), background=self.background)
            objects = scene.objects
            while two:  # any two cells in the caption's relation
                cells = rng.choice(9, size=2, replace=False)
                placed = tuple(replace(o, row=int(c) // 3, col=int(c) % 3) for o, c in zip(scene.objects, cells))
                if relation(*placed) == relation(*scene.objects):
                    objects = placed
                    break
            drawn = Scene(objects, other.background, other.jitter)
            images.append(torch.from_numpy(render(drawn, self.resolution, rng)) * 2 - 1)
        return torch.stack(images)

    def _caption(self, scene: Scene, index: int, reference: int = 0) -> str:
        # Reference 0 is the training caption; each further reference draws from its own stream.
        return describe(scene, _rng(self.seed, self.split, index, 1 + reference * 1000))

    def _image(self, scene: Scene, index: int) -> torch.Tensor:
        pixels = render(scene, self.resolution, _rng(self.seed, self.split, index, 2))
        return torch.from_numpy(pixels) * 2 - 1

    def __getitem__(self, index: int) -> dict:
        index = self._check(index)
        scene = self.scene(index)
        caption, paraphrase = self._caption(scene, index), self._caption(scene, index, 1)
        return {"image": self._image(scene, index), "caption": caption, "paraphrase": paraphrase, "index": index}
