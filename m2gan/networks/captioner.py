"""Image-conditioned captioner: image -> caption, an autoregressive transformer decoder.

A small convolutional encoder turns the image into an 8×8 grid of feature vectors (with learned
position embeddings, so "top left" can be read off). A pre-norm transformer decoder reads the
caption so far through causal self-attention and the grid through cross-attention, and predicts
the next token. Training is teacher-forced (:meth:`Captioner.forward`); decoding strategies live in
:mod:`m2gan.decoding` and only use :meth:`Captioner.encode` and :meth:`Captioner.decode`.

Token rows follow the tokenizer's layout ``[BOS] w1 … wn [EOS] [PAD] …``: the decoder reads
``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``.
"""

from __future__ import annotations

import torch
from torch import nn

from m2gan.networks.blocks import DownBlock, check_resolution

GRID_SIDE = 8  # the encoder stops at an 8×8 map: 64 image tokens at every input resolution


class ImageEncoder(nn.Module):
    """Down-sampling residual blocks from the input side to an 8×8 grid of ``width``-wide tokens."""

    def __init__(self, resolution: int, width: int, base_channels: int, max_channels: int) -> None:
        super().__init__()
        check_resolution(resolution, minimum=2 * GRID_SIDE)
        sides = []
        side = resolution
        while side > GRID_SIDE:
            sides.append(side)
            side //= 2
        channels = [min(max_channels, base_channels * 2**i) for i in range(len(sides) + 1)]
        self.from_rgb = nn.Conv2d(3, channels[0], 3, padding=1)
        self.blocks = nn.Sequential(*(DownBlock(channels[i], channels[i + 1]) for i in range(len(sides))))
        self.to_tokens = nn.Linear(channels[-1], width)
        self.position_embedding = nn.Parameter(torch.zeros(GRID_SIDE * GRID_SIDE, width))
        nn.init.normal_(self.position_embedding, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.from_rgb(images))  # (B, C, 8, 8)
        x = torch.nn.functional.leaky_relu(x, 0.2).flatten(2).transpose(1, 2)  # (B, 64, C)
        return self.to_tokens(x) + self.position_embedding  # (B, 64, width)


class Captioner(nn.Module):
    """Predict caption tokens from an image.

    Args:
        resolution: Input image side (a power of two, at least 16).
        vocab_size: Number of token ids.
        max_length: Tokens per caption row, ``[BOS]`` and ``[EOS]`` included.
        width: Width of image tokens, word embeddings and decoder layers.
        num_layers: Transformer decoder layers.
        num_heads: Attention heads per layer; must divide ``width``.
        base_channels: Encoder channels at full resolution (doubling as the side halves).
        max_channels: Cap on encoder channels.
    """

    def __init__(
        self,
        resolution: int,
        vocab_size: int,
        max_length: int,
        width: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        base_channels: int = 16,
        max_channels: int = 64,
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"captioner width {width} is not divisible by num_heads {num_heads}")
        self.max_length = max_length
        self.image_encoder = ImageEncoder(resolution, width, base_channels, max_channels)
        self.token_embedding = nn.Embedding(vocab_size, width)
        # The decoder never reads the last token of a row (nothing follows it to predict).
        self.position_embedding = nn.Parameter(torch.zeros(max_length - 1, width))
        nn.init.normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerDecoderLayer(
            width, num_heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.norm = nn.LayerNorm(width)
        self.to_logits = nn.Linear(width, vocab_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, 64, width) of images (B, 3, H, W) in [-1, 1]."""
        return self.image_encoder(images)

    def decode(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, vocab) for a caption prefix ``tokens`` (B, T), T < max_length.

        Position ``t`` sees tokens ``0 … t`` only (causal mask), so logits of a prefix never change
        when tokens are appended. Padding needs no mask: its logits only predict padding targets,
        which the loss ignores, and causality keeps it from reaching earlier positions.
        """
        length = tokens.shape[1]
        if length > self.position_embedding.shape[0]:
            raise ValueError(f"caption prefix of {length} tokens exceeds max_length - 1 = {self.max_length - 1}")
        x = self.token_embedding(tokens) + self.position_embedding[:length]  # (B, T, W)
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device, dtype=x.dtype)
        x = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True)
        return self.to_logits(self.norm(x))  # (B, T, V)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, max_length - 1, vocab) predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``."""
        return self.decode(self.encode(images), tokens[:, :-1])
