"""Image–caption datasets on disk: one record type, one dataset class, one account of bad samples.

Every on-disk format (:mod:`m2gan.data.formats`) reduces to a list of :class:`Record` — an image
file, all its captions, optionally a crop box — plus a :class:`Problems` account of what it had to
skip. :class:`CaptionedImages` turns records into the samples the data module batches, with the
same keys as the built-in shapes data.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from m2gan.images import decode_image, resize_and_crop

SPLITS = ("train", "val", "test")
"""The splits every dataset format provides."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One image and everything said about it.

    Attributes:
        image: Path of the image file.
        captions: All its non-empty captions (one is drawn per epoch; all are BLEU references).
        box: Optional crop (x, y, width, height) in pixels of the original image, e.g. CUB's bird box.
    """

    image: str
    captions: tuple[str, ...]
    box: tuple[float, float, float, float] | None = None


class Problems:
    """Counts of skipped samples by reason, with the first few examples of each (for messages)."""

    def __init__(self, examples: int = 3) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._keep = examples

    def add(self, reason: str, where: str) -> None:
        """Record one skipped sample: why, and which file or entry."""
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self._keep and where not in shown:  # one image with two empty captions is one example
            shown.append(where)

    @property
    def total(self) -> int:
        """Skipped samples of all reasons."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line per reason: count and examples."""
        return "; ".join(f"{n} {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.items())


def clean_captions(captions, where: str, problems: Problems) -> tuple[str, ...]:
    """Strip captions and drop empty ones (each counted as a problem)."""
    kept = []
    for caption in captions:
        text = " ".join(str(caption).split())
        if text:
            kept.append(text)
        else:
            problems.add("empty captions", where)
    return tuple(kept)


def verify_images(records: list[Record], resolution: int, problems: Problems, threads: int = 8) -> list[Record]:
    """Decode every image once (JPEGs at reduced scale) and drop those that fail, counting them.

    Threads help because PIL releases the GIL while decoding.
    """

    def readable(record: Record) -> str | None:
        try:
            decode_image(record.image, resolution, record.box)
            return None
        except ValueError as error:
            return str(error)

    with ThreadPoolExecutor(threads) as pool:
        errors = list(pool.map(readable, records))
    kept = []
    for record, error in zip(records, errors):
        if error is None:
            kept.append(record)
        else:
            problems.add("unreadable images", error)
    return kept


def view(
    image: Image.Image, captions: Sequence[str], resolution: int, rng: np.random.Generator | None, flip: bool
) -> tuple[torch.Tensor, str, str]:
    """One visit's sample of an image and its captions: (3, resolution, resolution) pixels, a caption
    and a paraphrase (another of its captions; the same one when the image has only one).

    With ``rng`` (training augmentation) a random caption, a random crop (and mirror, with ``flip``)
    and a random paraphrase drawn from it; without, the centre crop and the first two captions.
    """
    if rng is None:
        return resize_and_crop(image, resolution), captions[0], captions[min(1, len(captions) - 1)]
    choice = int(rng.integers(len(captions)))
    pixels = resize_and_crop(image, resolution, rng, flip)
    other = (choice + 1 + int(rng.integers(len(captions) - 1))) % len(captions) if len(captions) > 1 else choice
    return pixels, captions[choice], captions[other]


class CaptionedImages(Dataset):
    """Records as training samples: ``{"image": (3, R, R) in [-1, 1], "caption": str, "paraphrase": str,
    "index": int}`` (the paraphrase: another caption of the image, :func:`view`).

    With ``augment`` one caption per image is drawn at each visit, and the crop and flip, from a
    random stream of its own seeded by ``(seed, visit, index)``: a visit's sample never depends on
    the global random state, the data-loader workers or when it was fetched, so a resumed run sees
    exactly the samples of an uninterrupted one. The key of visit ``v`` to image ``i`` is
    ``v * len(self) + i`` (:class:`~m2gan.data.sampler.ResumableSampler` with ``visits=True``);
    plain indices are visit 0. An image that fails to load now (it passed verification,
    or verification was off) is returned as None and dropped by the data module's collate
    function, which counts it.

    Args:
        records: The split's records.
        resolution: Output side in pixels.
        name: What the samples are, for :attr:`fingerprint` (e.g. ``"coco:/data/coco:val"``).
        augment: Draw a random caption per visit, crop at random (training); False: the first
            caption and a centre crop (evaluation).
        flip: With ``augment``, mirror half the images.
        seed: Seed of the augmentation streams.
    """

    def __init__(
        self,
        records: list[Record],
        resolution: int,
        name: str,
        augment: bool = False,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        self.records, self.resolution, self.name = records, resolution, name
        self.augment, self.flip, self.seed = augment, flip, seed

    def __len__(self) -> int:
        return len(self.records)

    @property
    def fingerprint(self) -> str:
        """What the samples depend on; caches of derived data (FID's real features) are keyed by it."""
        return f"{self.name}:n={len(self.records)}:res={self.resolution}:augment={self.augment}"

    def caption(self, index: int) -> str:
        """The caption of sample ``index`` used for evaluation and tokenizer fitting: its first."""
        return self.records[index].captions[0]

    def references(self, index: int, count: int | None = None) -> list[str]:
        """All captions of sample ``index`` (the first ``count`` if given), for caption metrics."""
        captions = list(self.records[index].captions)
        return captions[:count] if count else captions

    def __getitem__(self, key: int) -> dict | None:
        visit, index = divmod(int(key), len(self.records))
        record = self.records[index]
        try:
            image = decode_image(record.image, self.resolution, record.box)
        except ValueError:
            return None
        rng = np.random.default_rng([self.seed, visit, index]) if self.augment else None
        pixels, caption, paraphrase = view(image, record.captions, self.resolution, rng, self.flip)
        return {"image": pixels, "caption": caption, "paraphrase": paraphrase, "index": index}
