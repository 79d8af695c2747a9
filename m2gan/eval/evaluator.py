"""Text–image consistency and diversity for any dataset, with a dual encoder trained on the run's data.

No pretrained CLIP or DAMSM weights can be assumed (nothing is downloaded), so the evaluator is a
small :class:`~m2gan.networks.DualEncoder` trained contrastively on the *training* split of the
run's own data, once, and cached under a key of that data, the tokenizer and the recipe. It is
independent of the discriminator, which learns against the generator.

* :func:`r_precision`: AttnGAN's protocol. Each image ranks its own caption among itself and
  ``candidates - 1`` captions of other images (whose text differs) by cosine similarity; the
  score is the fraction ranked first (chance: ``1 / candidates``). On real images it is the
  evaluator's own retrieval accuracy: the ceiling a generator can reach in its eyes.
* :func:`binding_candidate_sets`: the same protocol where each caption's candidates begin with
  its binding twins (:func:`m2gan.negatives.binding_twins`: the same words, bound to the other
  object), which 99 random captions almost never include. The evaluator is trained with those twins
  as hard negatives; how well it then tells them apart is its ceiling on the real images.
* :func:`diversity`: the mean pairwise cosine distance of images in the evaluator's image space:
  0 when every image of a prompt is the same (a generator that ignores its noise).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import IterableDataset

from m2gan.atomic import atomic_path
from m2gan.cache import cache_root, key_digest, made_once
from m2gan.images import to_float, to_uint8
from m2gan.negatives import TWIN_KINDS, WordPairs, binding_twins
from m2gan.networks import DualEncoder
from m2gan.tokenizer import SPECIAL_TOKENS, CaptionTokenizer


@dataclasses.dataclass(frozen=True)
class EvaluatorRecipe:
    """How the evaluator is trained by :func:`train_evaluator`; part of its cache key."""

    pool_size: int = 3_000
    """Training pairs it learns from (the first of the training split, one caption each)."""
    steps: int = 500
    batch_size: int = 64
    lr: float = 2e-3
    dim: int = 64
    channels: tuple[int, int, int] = (16, 32, 64)
    """Channels of the image encoder's three stages."""
    seed: int = 1234
    binding_twins: bool = True
    """Train with each caption's binding twins as hard negatives (evidence: the pool's captions)."""
    text_architecture: str = "gru"
    """Its caption encoder's (:class:`~m2gan.networks.TextEncoder`); the GRU ranks binding twins better."""


def training_pairs(dataset, count: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``count`` readable (image, caption) pairs of a dataset or stream: images (N, 3, H, W) uint8."""
    images, captions = [], []
    stream = iter(dataset) if isinstance(dataset, IterableDataset) else (dataset[i] for i in range(len(dataset)))
    for sample in stream:
        if sample is None:  # an unreadable image, already counted by the data module
            continue
        images.append(to_uint8(sample["image"]))
        captions.append(sample["caption"])
        if len(images) == count:
            break
    if len(images) < 2:
        raise ValueError("the evaluator needs at least 2 readable training pairs")
    return torch.stack(images), captions


def train_evaluator(
    images: torch.Tensor, captions: list[str], tokenizer: CaptionTokenizer, recipe: EvaluatorRecipe = EvaluatorRecipe()
) -> DualEncoder:
    """Train a dual encoder on (image, caption) pairs with the symmetric contrastive loss (about a minute on a CPU)."""
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    tokens = tokenizer.encode(captions)  # (N, L)
    text_id = torch.unique(tokens, dim=0, return_inverse=True)[1]  # (N,) equal captions share an id
    model = DualEncoder(
        tokenizer.vocab_size,
        tokenizer.max_length,
        dim=recipe.dim,
        channels=recipe.channels,
        text_architecture=recipe.text_architecture,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.steps)
    twins, has_twin = None, None
    if recipe.binding_twins:
        found = binding_twins(tokens, len(SPECIAL_TOKENS), WordPairs.of(tokens, tokenizer.vocab_size))
        twins = torch.stack([found[kind][0] for kind in TWIN_KINDS])  # (K, N, L)
        has_twin = torch.stack([found[kind][1] for kind in TWIN_KINDS])  # (K, N)
    model.train()
    batch = min(recipe.batch_size, len(captions))
    for _ in range(recipe.steps):
        index = torch.randperm(len(captions), generator=generator)[:batch]
        same = text_id[index][:, None] == text_id[index][None, :]  # (b, b)
        hard = {}
        if twins is not None:  # one of each caption's twins, at random
            scores = torch.rand(has_twin.shape[0], len(index), generator=generator)
            kind = scores.masked_fill(~has_twin[:, index], -1.0).argmax(0)  # (b,)
            hard = {"hard_tokens": twins[kind, index], "has_hard": has_twin[:, index].any(0)}
        loss = model.loss(to_float(images[index]), tokens[index], same, **hard)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def save_evaluator(model: DualEncoder, tokenizer: CaptionTokenizer, path: str | os.PathLike, resolution: int) -> None:
    """Write an evaluator as safetensors (no pickle); the header holds its sizes and the tokenizer it reads with."""
    text = model.text_encoder
    sizes = {
        "vocab_size": text.token_embedding.num_embeddings,
        "max_length": text.max_length,
        "text_architecture": text.architecture,
        "dim": model.image_encoder[-1].out_features,
        "channels": [model.image_encoder[i].out_channels for i in (0, 4, 8)],
        "resolution": resolution,
    }
    with atomic_path(path) as temporary:
        metadata = {"sizes": json.dumps(sizes), "tokenizer": tokenizer.to_json()}
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(temporary), metadata)


def load_evaluator(path: str | os.PathLike) -> tuple[DualEncoder, CaptionTokenizer, int]:
    """Read an evaluator written by :func:`save_evaluator`: the model (in eval mode), its tokenizer, its resolution."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        sizes = json.loads(metadata["sizes"])
        tokenizer = CaptionTokenizer.from_json(metadata["tokenizer"])
        state = load_file(str(path))
        model = DualEncoder(
            sizes["vocab_size"],
            sizes["max_length"],
            dim=sizes["dim"],
            channels=tuple(sizes["channels"]),
            text_architecture=sizes.get("text_architecture", "transformer"),  # older files: all transformers
        )
        model.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - safetensors and load_state_dict raise their own types
        raise ValueError(f"{path}: not a readable M2GAN evaluator ({str(error).splitlines()[0][:160]})") from None
    return model.eval(), tokenizer, int(sizes["resolution"])


def evaluator_key(fingerprint: str, tokenizer: CaptionTokenizer, resolution: int, recipe: EvaluatorRecipe) -> str:
    """The cache key of an evaluator: everything its weights depend on."""
    return key_digest(
        {
            **dataclasses.asdict(recipe),
            "data": fingerprint,
            "tokenizer": hashlib.sha256(tokenizer.to_json().encode()).hexdigest(),
            "resolution": resolution,
        }
    )


def evaluator_file(
    dataset, tokenizer: CaptionTokenizer, resolution: int, recipe: EvaluatorRecipe = EvaluatorRecipe(),
    cache_dir: str | os.PathLike | None = None,
) -> Path:  # fmt: skip
    """Path of the evaluator for a training ``dataset`` (with a ``fingerprint``); trained and cached on first use."""
    key = evaluator_key(dataset.fingerprint, tokenizer, resolution, recipe)
    path = Path(cache_dir or cache_root()) / "evaluators" / f"dual-encoder-{resolution}px-{key}.safetensors"

    def make(path: Path) -> None:
        images, captions = training_pairs(dataset, recipe.pool_size)
        save_evaluator(train_evaluator(images, captions, tokenizer, recipe), tokenizer, path, resolution)

    return made_once(path, make)


@torch.no_grad()
def embed_images(model: DualEncoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Unit image embeddings (N, dim) on the CPU of uint8 or [-1, 1] images (N, 3, H, W)."""
    device = next(model.parameters()).device
    return torch.cat(
        [
            model.encode_images(to_float(images[i : i + batch_size]).to(device)).cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


@torch.no_grad()
def embed_captions(
    model: DualEncoder, tokenizer: CaptionTokenizer, captions: list[str], batch_size: int = 256
) -> torch.Tensor:
    """Unit caption embeddings (N, dim) on the CPU."""
    device = next(model.parameters()).device
    return torch.cat(
        [
            model.encode_text(tokenizer.encode(captions[i : i + batch_size]).to(device)).cpu()
            for i in range(0, len(captions), batch_size)
        ]
    )


def candidate_sets(captions: list[str], candidates: int = 100, seed: int = 0) -> torch.Tensor:
    """(N, candidates) caption indices: row ``i`` is ``i`` followed by ``candidates - 1`` others whose text differs.

    Raises:
        ValueError: fewer than ``candidates`` distinct captions.
    """
    distinct = len(set(captions))
    if distinct < candidates:
        raise ValueError(f"R-precision needs {candidates} distinct captions, the set has {distinct}")
    generator = torch.Generator().manual_seed(seed)
    text_id = torch.tensor(_ids(captions))
    rows = []
    for i in range(len(captions)):
        order = torch.randperm(len(captions), generator=generator)
        others = order[text_id[order] != text_id[i]][: candidates - 1]
        rows.append(torch.cat([torch.tensor([i]), others]))
    return torch.stack(rows)


def caption_twins(captions: list[str], tokenizer: CaptionTokenizer, pairs: WordPairs | None = None) -> list[list[str]]:
    """Each caption's binding twins as text (:func:`m2gan.negatives.binding_twins`, evidence ``pairs``
    in ``tokenizer``'s ids; None = the captions' own), without repeats or the caption itself."""
    tokens = tokenizer.encode(captions)
    found = binding_twins(tokens, len(SPECIAL_TOKENS), pairs)
    texts = {kind: [tokenizer.decode(row) if hit else None for row, hit in zip(*found[kind])] for kind in TWIN_KINDS}
    twins = []
    for i, row in enumerate(tokens):
        own = tokenizer.decode(row)  # as the twins are written: normalised words
        twins.append(list(dict.fromkeys(t for t in (texts[kind][i] for kind in TWIN_KINDS) if t and t != own)))
    return twins


def binding_candidate_sets(
    captions: list[str], twins: list[list[str]], candidates: int = 100, seed: int = 0
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """R-precision sets that test binding: each caption with twins, then its twins, then random others.

    Args:
        captions: The images' own captions.
        twins: Each caption's binding twins (:func:`caption_twins`); captions without any are left out.

    Returns:
        texts: ``captions`` followed by every twin: the captions to embed.
        rows: (M,) indices of the captions (and images) that have twins.
        sets: (M, candidates) indices into ``texts``: own caption, its twins, then captions of other
            images whose text differs from all of those.
    """
    texts, rows, sets = list(captions), [], []
    generator = torch.Generator().manual_seed(seed)
    for i, own in enumerate(twins):
        if not own:
            continue
        first = [i, *range(len(texts), len(texts) + len(own))]
        texts.extend(own)
        excluded = {captions[i], *own}
        order = torch.randperm(len(captions), generator=generator).tolist()
        others = [j for j in order if captions[j] not in excluded][: candidates - len(first)]
        if len(first) + len(others) == candidates:
            rows.append(i)
            sets.append(first + others)
    return texts, torch.tensor(rows, dtype=torch.long), torch.tensor(sets, dtype=torch.long).reshape(-1, candidates)


def _ids(captions: list[str]) -> list[int]:
    seen: dict[str, int] = {}
    return [seen.setdefault(caption, len(seen)) for caption in captions]


def r_precision(image_embeddings: torch.Tensor, caption_embeddings: torch.Tensor, sets: torch.Tensor) -> float:
    """Fraction of images whose own caption (column 0 of ``sets``) is the most similar of their candidates."""
    scores = torch.einsum("nd,nkd->nk", image_embeddings, caption_embeddings[sets])  # (N, candidates)
    return (scores.argmax(dim=1) == 0).float().mean().item()


def nearest_captions(caption_embeddings: torch.Tensor, count: int, k: int) -> torch.Tensor:
    """For each of the first ``count`` captions, the indices of the ``k`` captions nearest to it in the
    evaluator's text space (itself and identical captions first), (count, k): groups of real images
    whose captions say the same, where the data cannot draw one caption again."""
    similarity = caption_embeddings[:count] @ caption_embeddings.T  # (count, N)
    similarity[torch.arange(count), torch.arange(count)] = float("inf")  # itself first, even among equals
    return similarity.topk(k, dim=1).indices


def diversity(embeddings: torch.Tensor) -> float:
    """Mean pairwise cosine distance within each group of unit embeddings (G, K, dim), averaged over groups."""
    groups, k, _ = embeddings.shape
    if k < 2:
        raise ValueError("diversity needs at least 2 images per group")
    similarity = embeddings @ embeddings.transpose(1, 2)  # (G, K, K)
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    return (1 - similarity[:, off_diagonal]).mean().item()
