"""Dual encoder: images and captions embedded in one space where matching pairs lie close.

A small CLIP-style model trained from scratch on a run's own training pairs. M2GAN uses it as an
*evaluator* (R-precision, per-prompt diversity) that is independent of the discriminator, which is
trained against the generator and would be a biased judge of it. It is not a pretrained CLIP or
DAMSM: its numbers compare runs on the same data, not with papers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from m2gan.networks.text_encoder import TextArchitecture, TextEncoder


class DualEncoder(nn.Module):
    """Image encoder (a small CNN) and caption encoder (one layer), unit-norm outputs.

    Args:
        vocab_size: Token ids of the tokenizer whose captions it reads.
        max_length: Longest token sequence.
        dim: Width of the shared embedding space.
        channels: Channels of the image encoder's three convolution stages.
        text_width: Width of the caption encoder.
        text_architecture: The caption encoder's (:class:`~m2gan.networks.TextEncoder`).
        temperature: Initial softmax temperature of the contrastive loss (learned from there).
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        dim: int = 64,
        channels: tuple[int, int, int] = (32, 64, 128),
        text_width: int = 64,
        text_architecture: TextArchitecture = "gru",
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.image_encoder = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.BatchNorm2d(c3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),  # (B, c3 * 16): a coarse layout, so "left" and "top" can be read
            nn.Linear(c3 * 16, dim),
        )
        self.text_encoder = TextEncoder(
            vocab_size, max_length, text_width, sentence_dim=dim, num_layers=1, architecture=text_architecture
        )
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, dim) of images (B, 3, H, W) in [-1, 1]."""
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, dim) of token ids (B, L)."""
        return F.normalize(self.text_encoder(tokens)[1], dim=-1)

    def loss(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        same_text: torch.Tensor | None = None,
        hard_tokens: torch.Tensor | None = None,
        has_hard: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Symmetric InfoNCE over a batch of matching pairs (images (B, 3, H, W), tokens (B, L)).

        Args:
            same_text: (B, B) bool, True where two rows' captions are identical: those pairs are
                not negatives and are masked out.
            hard_tokens: (B, L) one more caption per image that it must rank below its own (a
                binding twin), where ``has_hard`` (B,) bool says it has one.
        """
        image_embeddings, text_embeddings = self.encode_images(images), self.encode_text(tokens)
        scale = self.log_scale.exp().clamp(max=100)
        logits = scale * image_embeddings @ text_embeddings.T  # (B, B)
        if same_text is not None:
            logits = logits.masked_fill(
                same_text & ~torch.eye(len(logits), dtype=torch.bool, device=logits.device), float("-inf")
            )
        target = torch.arange(len(logits), device=logits.device)
        text_loss = F.cross_entropy(logits.T, target)
        if hard_tokens is not None:  # the image's row gains one column: its hard caption
            hard = scale * (image_embeddings * self.encode_text(hard_tokens)).sum(-1, keepdim=True)  # (B, 1)
            logits = torch.cat([logits, hard.masked_fill(~has_hard[:, None], float("-inf"))], dim=1)
        return (F.cross_entropy(logits, target) + text_loss) / 2
