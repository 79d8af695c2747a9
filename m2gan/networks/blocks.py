"""What the networks share: the resolution rule, the channel schedule, the down-sampling block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def check_resolution(resolution: int, minimum: int = 32, maximum: int = 256) -> int:
    """Return ``log2(resolution)``; raise ``ValueError`` unless it is a power of two from ``minimum`` to ``maximum``.

    The one resolution rule of the networks: generator and discriminator build their stages from
    4×4 up, and the captioner's encoder halves the side down to its 8×8 grid.
    """
    if not isinstance(resolution, int) or not minimum <= resolution <= maximum or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two from {minimum} to {maximum}, got {resolution!r}")
    return int(math.log2(resolution))


def stage_channels(resolution: int, base_channels: int, max_channels: int) -> dict[int, int]:
    """Channels at each feature-map side 4, 8, …, ``resolution``: doubling as the side halves, capped."""
    return {
        4 * 2**i: min(max_channels, base_channels * resolution // (4 * 2**i))
        for i in range(check_resolution(resolution) - 1)
    }


class DownBlock(nn.Module):
    """A 3×3 convolution, 2×2 average pooling, a second 3×3 convolution, and a residual shortcut.

    The channel increase happens after pooling, at a quarter of the pixels, which keeps the
    full-resolution stage cheap on a CPU.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(self.conv1(F.leaky_relu(x, 0.2)), 2)  # (B, C_in, H/2, W/2)
        h = self.conv2(F.leaky_relu(h, 0.2))  # (B, C_out, H/2, W/2)
        return self.shortcut(F.avg_pool2d(x, 2)) + h
