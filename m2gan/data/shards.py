"""WebDataset tar shards of image–caption pairs, streamed with the ``webdataset`` library.

A sample is the files of one key in a shard: an image (``.jpg``, ``.jpeg``, ``.png``, ``.webp``)
and a caption — ``.txt`` (one caption per line) or ``.json`` (``text``, ``caption`` or
``captions``: a string or a list). Shards are split across DDP ranks (``split_by_node``) and
data-loader workers (``split_by_worker``), so no two processes read the same shard; every rank
needs at least as many shards as it has workers. Bad samples (an undecodable image, no caption, a
caption that is not UTF-8, a damaged tar member) are skipped and counted; each worker logs its
count when it finishes a pass over its shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from m2gan.data.captioned import Problems, clean_captions, view
from m2gan.images import decode_image

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def shard_urls(urls: str | list[str]) -> list[str]:
    """Expand brace patterns (``data/{000..009}.tar``) into a list of shard paths or URLs."""
    import braceexpand

    patterns = [urls] if isinstance(urls, str) else list(urls)
    return [url for pattern in patterns for url in braceexpand.braceexpand(pattern)]


def sample_index(key: str, url: str) -> int:
    """A stable integer id of a sample (its batch ``index``), from its shard and key."""
    return int(hashlib.sha1(f"{os.path.basename(url)}/{key}".encode()).hexdigest()[:15], 16)


def parse_sample(sample: dict, resolution: int, problems: Problems) -> tuple | None:
    """(image, captions, index) of a raw WebDataset sample, or None (counted) if it is unusable."""
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if image_key is None:
        problems.add("captions without an image", where)
        return None
    try:
        if "txt" in sample:
            captions = sample["txt"].decode("utf-8").splitlines()
        elif "json" in sample:
            meta = json.loads(sample["json"].decode("utf-8"))
            value = next((meta[k] for k in ("text", "caption", "captions") if k in meta), [])
            captions = value if isinstance(value, list) else [value]
        else:
            captions = []
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        problems.add("captions that are not UTF-8 text or JSON", where)
        return None
    captions = clean_captions(captions, where, problems)
    if not captions:
        problems.add("images without captions", where)
        return None
    try:
        image = decode_image(io.BytesIO(sample[image_key]), resolution)
    except ValueError as error:
        problems.add("unreadable images", f"{where} ({error})")
        return None
    return image, captions, sample_index(sample["__key__"], sample.get("__url__", ""))


class CaptionShards(IterableDataset):
    """Stream training samples ``{"image", "caption", "index"}`` from WebDataset shards.

    Args:
        urls: Shard paths or URLs, brace patterns allowed.
        resolution: Output side in pixels.
        augment: Random caption, random crop (and ``flip``) per sample.
        flip: With ``augment``, mirror half the images.
        shuffle_buffer: Samples mixed across shards in a buffer (0 = stream order).
    """

    def __init__(
        self,
        urls: str | list[str],
        resolution: int,
        augment: bool = True,
        flip: bool = False,
        shuffle_buffer: int = 1000,
    ) -> None:
        self.urls = shard_urls(urls)
        if not self.urls:
            raise ValueError("no shards given")
        self.resolution, self.augment, self.flip, self.shuffle_buffer = resolution, augment, flip, shuffle_buffer

    @property
    def fingerprint(self) -> str:
        """What the stream is made of; caches of derived data (the evaluator) are keyed by it."""
        return f"webdataset:{','.join(self.urls)}:res={self.resolution}:augment={self.augment}"

    def raw_samples(self):
        """The raw samples this process (rank and worker) reads: its own shards only."""
        import webdataset as wds

        pipeline = wds.WebDataset(
            self.urls,
            shardshuffle=len(self.urls) if self.augment else False,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            handler=wds.warn_and_continue,
            empty_check=False,
        )
        return pipeline.shuffle(self.shuffle_buffer) if self.augment and self.shuffle_buffer else pipeline

    def __iter__(self):
        problems = Problems()
        for raw in self.raw_samples():
            parsed = parse_sample(raw, self.resolution, problems)
            if parsed is None:
                continue
            image, captions, index = parsed
            # Streamed samples have no fixed visit order: augmentation draws from torch's random state.
            rng = np.random.default_rng(int(torch.randint(2**62, ()))) if self.augment else None
            pixels, caption, paraphrase = view(image, captions, self.resolution, rng, self.flip)
            yield {"image": pixels, "caption": caption, "paraphrase": paraphrase, "index": index}
        if problems.total:
            worker = get_worker_info()
            log.warning(
                "webdataset (worker %s): skipped %d bad samples in this pass: %s",
                worker.id if worker else 0,
                problems.total,
                problems.summary(),
            )


class ShardSamples(Dataset):
    """A small shard set (validation, test) read once into memory, as a map-style dataset.

    Images stay encoded until a sample is read; every caption is kept as a BLEU reference.
    """

    def __init__(self, urls: str | list[str], resolution: int, problems: Problems) -> None:
        import webdataset as wds

        self.urls, self.resolution = shard_urls(urls), resolution
        self.items: list[tuple[bytes, tuple[str, ...], str]] = []
        for raw in wds.WebDataset(self.urls, shardshuffle=False, handler=wds.warn_and_continue, empty_check=False):
            parsed = parse_sample(raw, 8, problems)  # decoded once, small, only to verify the image
            if parsed is not None:
                image_key = next(k for k in IMAGE_KEYS if k in raw)
                self.items.append((raw[image_key], parsed[1], f"{raw.get('__url__')}:{raw['__key__']}"))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def fingerprint(self) -> str:
        """What the samples depend on (the shard list and the resolution)."""
        digest = hashlib.sha1("\n".join(self.urls).encode()).hexdigest()[:16]
        return f"webdataset:{digest}:n={len(self.items)}:res={self.resolution}"

    def caption(self, index: int) -> str:
        """The first caption of sample ``index``."""
        return self.items[index][1][0]

    def references(self, index: int, count: int | None = None) -> list[str]:
        """All captions of sample ``index`` (the first ``count`` if given)."""
        captions = list(self.items[index][1])
        return captions[:count] if count else captions

    def __getitem__(self, index: int) -> dict:
        encoded, captions, _ = self.items[index]
        image = decode_image(io.BytesIO(encoded), self.resolution)
        pixels, caption, paraphrase = view(image, captions, self.resolution, None, False)
        return {"image": pixels, "caption": caption, "paraphrase": paraphrase, "index": index}
