"""Differentiable augmentation for the critic (DiffAugment, Zhao et al., 2020).

Real and generated images get the same kind of random transform before the critic sees them,
inside both players' losses: the critic cannot memorise the exact real pixels, and since the
generator is trained *through* the transform, it has no reason to draw it. Only translation is
offered: DiffAugment's colour jitter and cutout change exactly what captions here name (colour,
presence), and a shift of a few pixels keeps an object in its named place. It is meant for small
datasets: on the default job it costs shape badly (``benchmarks/README.md``, What limits shape).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def translate(images: torch.Tensor, ratio: float) -> torch.Tensor:
    """Each image of ``images`` (B, C, H, W) shifted by a random whole number of pixels, at most
    ``ratio`` of its side along each axis, the uncovered border filled with zeros (mid-grey in
    [-1, 1]). Differentiable in ``images``; the shifts are drawn on the CPU, so a seed gives the
    same ones on any device."""
    batch, channels, height, width = images.shape
    reach = int(ratio * min(height, width) + 0.5)
    if reach == 0:
        return images
    shift = torch.randint(-reach, reach + 1, (batch, 2)).to(images.device)  # (B, 2): down, right
    padded = F.pad(images, (reach, reach, reach, reach))  # (B, C, H + 2r, W + 2r)
    rows = torch.arange(height, device=images.device)[None] + reach - shift[:, :1]  # (B, H)
    cols = torch.arange(width, device=images.device)[None] + reach - shift[:, 1:]  # (B, W)
    padded = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, width + 2 * reach))
    return padded.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))  # (B, C, H, W)
