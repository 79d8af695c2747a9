"""Losses of M2GAN, as plain functions of logits, embeddings and tensors.

Logit convention: the discriminator outputs a real-valued score, higher meaning "real and matching".
Each ``d_*`` loss is minimised by the discriminator, each ``g_*`` loss by the generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

AdversarialLoss = Literal["hinge", "non_saturating"]
MODE_SEEKING_EPS = 1e-5
"""Keeps the mode-seeking term finite for identical images (MSGAN's own value)."""


def d_adversarial(
    real: torch.Tensor, negatives: Sequence[tuple[torch.Tensor, float]], kind: AdversarialLoss
) -> torch.Tensor:
    """Matching-aware discriminator loss.

    (real image, its caption) counts as real. Every entry of ``negatives`` counts as fake:
    typically (generated image, caption), (real image, another sample's caption) and (real image,
    its caption with one word swapped). The fake terms are averaged with their weights, so the real
    and the fake side keep equal weight whatever the weights are.

    Args:
        real: Logits (B,) of real matching pairs.
        negatives: (logits, weight) pairs; entries with weight 0 are skipped.
        kind: ``"hinge"`` or ``"non_saturating"`` (the logistic loss).
    """
    if kind == "hinge":
        real_term, fake_term = F.relu(1 - real).mean(), lambda x: F.relu(1 + x).mean()
    elif kind == "non_saturating":
        real_term, fake_term = F.softplus(-real).mean(), lambda x: F.softplus(x).mean()
    else:
        raise ValueError(f"unknown adversarial loss {kind!r}; choose 'hinge' or 'non_saturating'")
    used = [(logits, weight) for logits, weight in negatives if weight > 0]
    if not used:
        raise ValueError("d_adversarial needs at least one negative with a positive weight")
    total = sum(weight for _, weight in used)
    return real_term + sum(weight * fake_term(logits) for logits, weight in used) / total


def g_adversarial(fake: torch.Tensor, kind: AdversarialLoss) -> torch.Tensor:
    """Generator loss on logits (B,) of its images paired with their captions."""
    if kind == "hinge":
        return -fake.mean()
    if kind == "non_saturating":
        return F.softplus(-fake).mean()
    raise ValueError(f"unknown adversarial loss {kind!r}; choose 'hinge' or 'non_saturating'")


def contrastive(
    image_embedding: torch.Tensor,
    text_embedding: torch.Tensor,
    temperature: float,
    hard_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric image-text InfoNCE over a batch (XMC-GAN / CLIP style).

    Row ``i`` of the image and text embeddings is a matching pair; every other row of the batch is
    a negative. ``hard_negatives`` (B, E), if given, adds one more text negative per image (row
    ``i`` for image ``i``), e.g. its own caption with one word swapped.

    Args:
        image_embedding: (B, E) image embeddings.
        text_embedding: (B, E) text embeddings.
        temperature: Softmax temperature of the cosine similarities.
        hard_negatives: Optional (B, E) extra text embeddings, one per image.
    """
    image = F.normalize(image_embedding, dim=1)
    text = F.normalize(text_embedding, dim=1)
    logits = image @ text.t() / temperature  # (B, B)
    targets = torch.arange(logits.shape[0], device=logits.device)
    text_to_image = F.cross_entropy(logits.t(), targets)
    if hard_negatives is not None:
        hard = (image * F.normalize(hard_negatives, dim=1)).sum(1, keepdim=True) / temperature  # (B, 1)
        logits = torch.cat([logits, hard], dim=1)  # (B, B + 1)
    return 0.5 * (F.cross_entropy(logits, targets) + text_to_image)


def text_contrastive(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    hard_negatives: torch.Tensor,
    hard_mask: torch.Tensor,
    temperature: float,
    duplicates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Text-only InfoNCE: each caption nearest its paraphrase, its binding twins and other captions apart.

    Row ``i`` of ``anchor`` (a caption's sentence vector) must pick row ``i`` of ``positive`` (another
    caption of the same image) among every row of ``positive`` and its own hard negatives (its
    binding twins: the same words bound otherwise). A bag of words scores a twin exactly like the
    caption, so this loss is only low for an encoder that reads word order.

    Args:
        anchor: (B, S) sentence vectors of the captions.
        positive: (B, S) sentence vectors of their paraphrases.
        hard_negatives: (B, K, S) sentence vectors of each caption's K twins.
        hard_mask: (B, K) bool, which twins exist (a caption without one of a kind has none there).
        temperature: Softmax temperature of the cosine similarities.
        duplicates: Optional (B, B) bool, True where ``positive`` row j says the same as caption i
            (j != i): left out, so a repeated caption in the batch is no negative of itself.
    """
    a, p, h = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1), F.normalize(hard_negatives, dim=-1)
    logits = a @ p.t() / temperature  # (B, B)
    if duplicates is not None:
        logits = logits.masked_fill(duplicates, float("-inf"))
    hard = (a[:, None, :] * h).sum(-1) / temperature  # (B, K)
    logits = torch.cat([logits, hard.masked_fill(~hard_mask, float("-inf"))], dim=1)  # (B, B + K)
    return F.cross_entropy(logits, torch.arange(anchor.shape[0], device=anchor.device))


def sequence_log_likelihood(logits: torch.Tensor, tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Teacher-forced log-likelihood (B,) of each caption row ``tokens`` (B, L) under ``logits`` (B, L-1, V),
    summed over its non-padding targets."""
    targets = tokens[:, 1:]
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L-1)
    return (log_probs * (targets != pad_id)).sum(1)


def likelihood_margin(own: torch.Tensor, twin: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge on log-likelihoods: a caption must be at least ``margin`` nats likelier than its twin.

    ``own`` and ``twin`` (T,) are a captioner's sequence log-likelihoods of the caption and of its
    binding twin given the same image. Pairs already ``margin`` apart give no gradient, so the
    term stops pushing the captioner (or the generator it judges) once it reads the binding.
    """
    return F.relu(margin - (own - twin)).mean()


def word_region_similarity(
    words: torch.Tensor, padding: torch.Tensor, regions: torch.Tensor, sharpness: float = 5.0
) -> torch.Tensor:
    """How well each image shows each caption word by word (AttnGAN's DAMSM, XMC-GAN's word-region term).

    Every word of caption ``j`` attends over the regions of image ``i``; the similarity is the mean,
    over the caption's words, of the cosine between a word and the region mix it attended to.
    Contextual word features ("red" of "red circle" is not "red" of "red square") let it tell
    which attribute belongs to which object.

    Args:
        words: (B, L, E) word embeddings of B captions.
        padding: (B, L) True at padding positions (left out of the mean).
        regions: (B, R, E) region embeddings of B images.
        sharpness: Inverse temperature of each word's attention over regions.

    Returns:
        (B, B) similarities in [-1, 1]: row ``i`` an image, column ``j`` a caption.
    """
    # Every caption j against every image i: broadcast (1, Bj, L, E) words against (Bi, 1, R, E) regions.
    return paired_word_region_similarity(words.unsqueeze(0), padding.unsqueeze(0), regions.unsqueeze(1), sharpness)


def paired_word_region_similarity(
    words: torch.Tensor, padding: torch.Tensor, regions: torch.Tensor, sharpness: float = 5.0
) -> torch.Tensor:
    """:func:`word_region_similarity` of caption ``b`` and image ``b`` only: (B,) from words (B, L, E),
    padding (B, L) and regions (B, R, E) (any leading dimensions that broadcast)."""
    w = F.normalize(words, dim=-1)
    r = F.normalize(regions, dim=-1)
    attention = (sharpness * w @ r.transpose(-1, -2)).softmax(dim=-1)  # (..., L, R)
    cosine = F.cosine_similarity(attention @ r, w, dim=-1)  # (..., L): each word against the regions it chose
    keep = (~padding).to(cosine.dtype)
    return (cosine * keep).sum(-1) / keep.sum(-1).clamp_min(1.0)


def matching_cross_entropy(
    similarity: torch.Tensor, temperature: float, hard_negatives: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE of a (B, B) image-caption similarity matrix whose diagonal holds the pairs.

    ``hard_negatives`` (B, K), if given, are more captions' similarities to each image (row ``i``
    for image ``i``; ``-inf`` where there is none), ranked by the image's side only.
    """
    logits = similarity / temperature
    targets = torch.arange(logits.shape[0], device=logits.device)
    text_to_image = F.cross_entropy(logits.t(), targets)
    if hard_negatives is not None:
        logits = torch.cat([logits, hard_negatives / temperature], dim=1)  # (B, B + K)
    return 0.5 * (F.cross_entropy(logits, targets) + text_to_image)


def r1_penalty(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """R1 penalty: mean over the batch of ``||d logits / d images||^2`` (multiply by gamma/2 yourself).

    ``images`` must require grad and ``logits`` must have been computed from them.
    """
    (grad,) = torch.autograd.grad(logits.sum(), images, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


def matching_aware_gradient_penalty(
    logits: torch.Tensor, images: torch.Tensor, sentence: torch.Tensor, power: float = 6.0
) -> torch.Tensor:
    """DF-GAN's MA-GP: ``mean(||(d/d image, d/d sentence) logits||^power)`` on real matching pairs.

    Both ``images`` and ``sentence`` must require grad and ``logits`` must depend on them.
    """
    grad_image, grad_sentence = torch.autograd.grad(logits.sum(), (images, sentence), create_graph=True)
    norm = torch.cat([grad_image.flatten(1), grad_sentence.flatten(1)], dim=1).norm(2, dim=1)
    return norm.pow(power).mean()


def caption_cross_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, pad_id: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Teacher-forced captioning loss: mean cross-entropy of ``tokens[:, 1:]`` given ``logits``.

    Used both to train the captioner on real pairs and, as the cycle (redescription) loss, to score
    how well a generated image is described by the prompt it was drawn from.

    Args:
        logits: (B, L-1, V) next-token logits for the prefixes ``tokens[:, :-1]``.
        tokens: (B, L) caption rows ``[BOS] … [EOS] [PAD] …``.
        pad_id: Padding id; padding targets are ignored.
        label_smoothing: Probability mass spread uniformly over the vocabulary (0 = none).
    """
    targets = tokens[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
    )


def mode_seeking(
    images_a: torch.Tensor, images_b: torch.Tensor, noise_a: torch.Tensor, noise_b: torch.Tensor
) -> torch.Tensor:
    """MSGAN's mode-seeking term (Mao et al., 2019): the inverse of how far two images drawn for the
    same captions lie apart per unit of distance between their noise vectors, (B, 3, H, W) and (B, Z).

    Minimised by the generator, it rewards images that change with the noise: a generator that
    ignores its noise pays ``1 / eps``.
    """
    ratio = (images_a - images_b).abs().mean() / (noise_a - noise_b).abs().mean()
    return 1 / (ratio + MODE_SEEKING_EPS)
