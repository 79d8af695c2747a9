"""Multimodal discriminator: judges (image, sentence) pairs.

An image backbone of down-sampling residual blocks ends in a 4×4 map ``f`` that is flattened, not
pooled, so the heads know where things are. Two heads read it:

* an unconditional head ``w·f`` (is this a plausible image at all), and
* a projection head ``<h, P s>`` with the image embedding ``h = E f`` (does the image match the
  sentence ``s``), the projection-discriminator form, which conditions far faster than
  concatenating text to features.

``h`` and ``P s`` also serve the image-text contrastive loss, so the text encoder learns
discriminative features from the discriminator's side. The unconditional head reads ``f``, not
``h``, so realism is judged on features the text-alignment losses do not shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2gan.networks.blocks import DownBlock, stage_channels


class Discriminator(nn.Module):
    """Score image-sentence pairs; higher means "real and matching".

    Args:
        resolution: Input side, a power of two from 32 to 256.
        sentence_dim: Width of the text encoder's sentence vector.
        base_channels: Channels at full resolution; they double at each halving of the side.
        max_channels: Cap on channels at low resolution.
        embed_dim: Width of the joint image-text embedding used by the projection head.
        word_dim: With a value, a word-region head: the 4×4 map's 16 regions and the caption's
            words (of this width) are projected into the joint embedding, for word-by-word matching.
    """

    def __init__(
        self,
        resolution: int = 32,
        sentence_dim: int = 64,
        base_channels: int = 32,
        max_channels: int = 128,
        embed_dim: int = 64,
        word_dim: int | None = None,
    ) -> None:
        super().__init__()
        channels = stage_channels(resolution, base_channels, max_channels)
        sides = sorted(channels, reverse=True)  # resolution, …, 8, 4
        self.from_rgb = nn.Conv2d(3, channels[resolution], 3, padding=1)
        self.blocks = nn.Sequential(*(DownBlock(channels[s], channels[s // 2]) for s in sides[:-1]))
        self.to_embedding = nn.Linear(channels[4] * 4 * 4, embed_dim)
        self.unconditional = nn.Linear(channels[4] * 4 * 4, 1)
        self.text_projection = nn.Linear(sentence_dim, embed_dim)
        self.has_regions = word_dim is not None
        if self.has_regions:  # built last: the other layers draw the same initial weights without it
            self.region_projection = nn.Conv2d(channels[4], embed_dim, 1)
            self.word_projection = nn.Linear(word_dim, embed_dim)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image embedding ``h`` (B, embed_dim) and unconditional logits (B,) of images (B, 3, H, W)."""
        return self.features_and_regions(images)[0]

    def features_and_regions(
        self, images: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """:meth:`features`, and the region embeddings (B, 16, embed_dim) with a word-region head (else None)."""
        x = F.leaky_relu(self.blocks(self.from_rgb(images)), 0.2)  # (B, C, 4, 4)
        flat = x.flatten(1)  # (B, C * 16)
        features = (self.to_embedding(flat), self.unconditional(flat).squeeze(1))
        if not self.has_regions:
            return features, None
        return features, self.region_projection(x).flatten(2).transpose(1, 2)  # (B, 16, embed_dim)

    def embed_words(self, words: torch.Tensor) -> torch.Tensor:
        """Word embeddings (B, L, embed_dim) in the regions' space (needs the word-region head)."""
        return self.word_projection(words)

    def embed_text(self, sentence: torch.Tensor) -> torch.Tensor:
        """Text embedding ``P s`` (B, embed_dim) in the image embedding's space."""
        return self.text_projection(sentence)

    @staticmethod
    def score(image_features: tuple[torch.Tensor, torch.Tensor], text_embedding: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for paired rows of image features (from :meth:`features`) and text embeddings."""
        embedding, unconditional = image_features
        return unconditional + (embedding * text_embedding).sum(dim=1)

    def forward(self, images: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for images (B, 3, H, W) paired with sentence vectors (B, D)."""
        return self.score(self.features(images), self.embed_text(sentence))
