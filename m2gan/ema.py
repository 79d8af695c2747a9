"""Exponential moving averages of network weights (the EMA generator used for sampling)."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch_size: int, half_life_images: float, images_seen: int, rampup: float | None) -> float:
    """Per-update decay for an EMA whose weights halve their age every ``half_life_images`` images.

    With ``rampup`` (e.g. 0.05, as in StyleGAN2-ADA) the half-life is at most ``rampup * images_seen``,
    so early in training the average follows the fast-moving weights instead of the random init.
    """
    half_life = half_life_images
    if rampup is not None:
        half_life = min(half_life, rampup * images_seen)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(average: nn.Module, current: nn.Module, beta: float) -> None:
    """Move ``average``'s parameters towards ``current``'s by ``1 - beta``; copy buffers as they are."""
    average_params = list(average.parameters())
    current_params = [p.detach() for p in current.parameters()]
    torch._foreach_lerp_(average_params, current_params, 1.0 - beta)
    for average_buffer, current_buffer in zip(average.buffers(), current.buffers()):
        average_buffer.copy_(current_buffer)
