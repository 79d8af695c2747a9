"""An independent reader of binding: a captioner trained on real pairs only, frozen and cached.

Whether a generated "red circle left of a blue square" shows the red circle on the left is read by
a captioner: which is likelier given the image, the caption or its binding twin (the same words
bound the other way, :func:`m2gan.negatives.binding_twins)`? The model's own captioner reads this
(``val/caption_binding_fake``), but it trains beside the generator and may teach it (the
``caption_preference_weight`` term): a meter must not be the teacher. This reader is a separate
:class:`~m2gan.networks.Captioner`, trained with teacher-forced cross-entropy on the *training*
split's real (image, caption) pairs only, once per data, tokenizer and recipe, and cached like the
R-precision evaluator (:mod:`m2gan.eval.evaluator`). Its reading of real images is its ceiling.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from m2gan import losses
from m2gan.atomic import atomic_path
from m2gan.cache import cache_root, made_once
from m2gan.eval.evaluator import evaluator_key, training_pairs
from m2gan.images import to_float
from m2gan.negatives import TWIN_KINDS, WordPairs, binding_twins
from m2gan.networks import Captioner
from m2gan.objective import Twins, twin_likelihoods, wins
from m2gan.tokenizer import PAD_ID, SPECIAL_TOKENS, CaptionTokenizer


@dataclasses.dataclass(frozen=True)
class ReaderRecipe:
    """How the reader is trained by :func:`train_reader`; part of its cache key."""

    pool_size: int = 3_000
    """Training pairs it learns from (the first of the training split, one caption each)."""
    steps: int = 1_500
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 64
    """Width of its image tokens and decoder (the model's default captioner's)."""
    layers: int = 2
    channels: int = 16
    seed: int = 4321


def train_reader(
    images: torch.Tensor, captions: list[str], tokenizer: CaptionTokenizer, recipe: ReaderRecipe = ReaderRecipe()
) -> Captioner:
    """A captioner trained on (image, caption) pairs, images (N, 3, H, W) uint8, by teacher-forced cross-entropy."""
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    tokens = tokenizer.encode(captions)  # (N, L)
    model = _reader(images.shape[-1], tokenizer, recipe.width, recipe.layers, recipe.channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.steps)
    model.train()
    for _ in range(recipe.steps):
        index = torch.randperm(len(captions), generator=generator)[: recipe.batch_size]
        loss = losses.caption_cross_entropy(model(to_float(images[index]), tokens[index]), tokens[index], PAD_ID)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval().requires_grad_(False)


def _reader(resolution: int, tokenizer: CaptionTokenizer, width: int, layers: int, channels: int) -> Captioner:
    return Captioner(resolution, tokenizer.vocab_size, tokenizer.max_length, width, layers, base_channels=channels)


def save_reader(model: Captioner, tokenizer: CaptionTokenizer, path: str | os.PathLike, sizes: dict) -> None:
    """Write a reader as safetensors (no pickle); the header holds its ``sizes`` and its tokenizer."""
    with atomic_path(path) as temporary:
        metadata = {"sizes": json.dumps(sizes), "tokenizer": tokenizer.to_json()}
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(temporary), metadata)


def load_reader(path: str | os.PathLike) -> tuple[Captioner, CaptionTokenizer]:
    """Read a reader written by :func:`save_reader`: the captioner (frozen, in eval mode) and its tokenizer."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        sizes = json.loads(metadata["sizes"])
        tokenizer = CaptionTokenizer.from_json(metadata["tokenizer"])
        model = _reader(sizes["resolution"], tokenizer, sizes["width"], sizes["layers"], sizes["channels"])
        model.load_state_dict(load_file(str(path)))
    except Exception as error:  # noqa: BLE001 - safetensors and load_state_dict raise their own types
        raise ValueError(f"{path}: not a readable M2GAN binding reader ({str(error).splitlines()[0][:160]})") from None
    return model.eval().requires_grad_(False), tokenizer


def reader_file(
    dataset, tokenizer: CaptionTokenizer, resolution: int, recipe: ReaderRecipe = ReaderRecipe(),
    cache_dir: str | os.PathLike | None = None,
) -> Path:  # fmt: skip
    """Path of the reader for a training ``dataset`` (with a ``fingerprint``); trained and cached on first use."""
    key = evaluator_key(dataset.fingerprint, tokenizer, resolution, recipe)  # the same fields, this recipe's
    path = Path(cache_dir or cache_root()) / "readers" / f"captioner-{resolution}px-{key}.safetensors"

    def make(path: Path) -> None:
        images, captions = training_pairs(dataset, recipe.pool_size)
        sizes = {"resolution": resolution, "width": recipe.width, "layers": recipe.layers, "channels": recipe.channels}
        save_reader(train_reader(images, captions, tokenizer, recipe), tokenizer, path, sizes)

    return made_once(path, make)


@torch.no_grad()
def twin_preference(
    reader: Captioner,
    tokenizer: CaptionTokenizer,
    images: torch.Tensor,
    captions: list[str],
    pairs: WordPairs | None = None,
    batch_size: int = 256,
) -> dict[str, tuple[float, int]]:
    """How often the reader finds each image's caption likelier than its binding twin, per twin kind.

    Args:
        images: (N, 3, H, W) uint8 or [-1, 1] images, real or drawn for ``captions``.
        pairs: Word pairs (in ``tokenizer``'s ids) that decide which words may trade places; None =
            the captions' own.

    Returns:
        ``{kind: (share of wins, ties counting half; number of captions with a twin of that kind)}``
        for the kinds some caption has.
    """
    device = next(reader.parameters()).device
    tokens = tokenizer.encode(captions)
    if pairs is None:
        pairs = WordPairs.of(tokens, tokenizer.vocab_size)
    twins = binding_twins(tokens, len(SPECIAL_TOKENS), pairs)
    scores: dict[str, list[torch.Tensor]] = {kind: [] for kind in TWIN_KINDS}
    for start in range(0, len(captions), batch_size):
        chunk = slice(start, start + batch_size)
        memory = reader.encode(to_float(images[chunk]).to(device))
        for kind in TWIN_KINDS:
            twin_tokens, found = twins[kind][0][chunk], twins[kind][1][chunk]
            rows = found.nonzero().flatten()
            if len(rows):
                twin = Twins(twin_tokens[rows].to(device), rows.to(device))
                scores[kind].append(wins(*twin_likelihoods(reader, memory, tokens[chunk].to(device), twin)).cpu())
    return {kind: (float(torch.cat(s).mean()), sum(len(x) for x in s)) for kind, s in scores.items() if s}
