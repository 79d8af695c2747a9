"""Text-conditioned generator: noise + sentence vector -> image.

A DF-GAN-style stack of up-sampling residual blocks. The condition ``c = [z, sentence]`` enters
twice: a linear layer turns it into the 4×4 starting feature map (so the layout, e.g. where an
object sits, can depend on the text), and every block modulates its features with a per-channel
scale and shift predicted from ``c`` (text fused at every resolution stage).

Optionally (``attention_sides``), the feature maps of some stages also attend to the caption's
word features (AttnGAN's word attention, as cross-attention): each position reads the words that
concern it, so "cyan" can act on one object and "red" on another. Each attention enters through a
learned gate that starts closed, so a stage begins as the sentence-only generator and opens to the
words as far as training finds them useful.

Optionally (``noise_injection``), every stage's output also gets a noise map at a learned
per-channel strength (StyleGAN's per-layer noise): noise that enters only at the start is partly
washed out by the blocks. The maps are fixed random projections of ``z`` (one basis per stage, a
buffer), not fresh random draws, so one seed still gives one image on any device.

The last layer is linear by default (StyleGAN2): pixels are clamped to [-1, 1] only when an image
is converted to pixels. A final ``tanh`` passes almost no gradient where it saturates, and on data
whose pixels mostly sit at an end of the range (black backgrounds) a generator pushed there stays
there: it draws black images for the rest of the run.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from m2gan.networks.blocks import stage_channels


class Modulation(nn.Module):
    """Per-channel affine modulation ``x * (1 + gamma(c)) + beta(c)`` (DF-GAN's affine block)."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.ReLU(), nn.Linear(cond_dim, 2 * channels))
        nn.init.zeros_(self.mlp[-1].weight)  # start as the identity
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.mlp(cond)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        return x * (1 + gamma) + beta


class WordAttention(nn.Module):
    """Cross-attention from every position of a feature map to the words of its caption.

    Args:
        channels: Channels of the feature map (queries, and the output).
        word_dim: Width of the text encoder's word features (keys and values).
    """

    def __init__(self, channels: int, word_dim: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Linear(word_dim, channels)
        self.value = nn.Linear(word_dim, channels)
        self.out = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Parameter(torch.zeros(()))  # tanh(0) = 0: closed at the start

    def weights(self, x: torch.Tensor, words: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Attention of each position over the words, (B, H*W, L); rows sum to 1, padding gets 0."""
        q = self.query(F.leaky_relu(x, 0.2)).flatten(2).transpose(1, 2)  # (B, HW, C)
        k = self.key(words)  # (B, L, C)
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5  # (B, HW, L)
        return scores.masked_fill(padding[:, None, :], float("-inf")).softmax(dim=-1)

    def forward(self, x: torch.Tensor, words: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) plus the gated words it attends to; ``padding`` (B, L) is True where ignored."""
        attended = self.weights(x, words, padding) @ self.value(words)  # (B, HW, C)
        attended = attended.transpose(1, 2).reshape(x.shape)  # (B, C, H, W)
        return x + torch.tanh(self.gate) * self.out(attended)


class UpBlock(nn.Module):
    """A modulated 3×3 convolution, nearest ×2 up-sampling, a second one, and a residual shortcut.

    The first convolution runs before up-sampling, at a quarter of the pixels: on a CPU this halves
    the block's cost with no visible loss at the resolutions M2GAN targets.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int) -> None:
        super().__init__()
        self.mod1 = Modulation(in_channels, cond_dim)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.mod2 = Modulation(out_channels, cond_dim)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(self.mod1(x, cond), 0.2))  # (B, C_out, H, W)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")  # (B, C_out, 2H, 2W)
        h = self.conv2(F.leaky_relu(self.mod2(h, cond), 0.2))
        return F.interpolate(self.shortcut(x), scale_factor=2.0, mode="nearest") + h


Output = Literal["linear", "tanh"]


class Generator(nn.Module):
    """Map noise and a sentence vector to an RGB image (in [-1, 1] once clamped).

    Args:
        resolution: Output side, a power of two from 32 to 256.
        noise_dim: Width of the noise vector ``z``.
        sentence_dim: Width of the text encoder's sentence vector.
        base_channels: Channels at full resolution; they double at each halving of the side.
        max_channels: Cap on channels at low resolution.
        word_dim: Width of the text encoder's word features (needed with ``attention_sides``).
        attention_sides: Feature-map sides (8 … resolution) whose block output attends to the words.
        output: ``"linear"``: the last convolution's output as it is (values outside [-1, 1] are
            clamped when converted to pixels); ``"tanh"``: squashed into (-1, 1), as in DF-GAN.
        noise_injection: Add a noise map made from ``z`` to every stage's output, at a learned
            per-channel strength that starts at 0.
    """

    def __init__(
        self,
        resolution: int = 32,
        noise_dim: int = 64,
        sentence_dim: int = 64,
        base_channels: int = 32,
        max_channels: int = 128,
        word_dim: int = 64,
        attention_sides: tuple[int, ...] = (),
        output: Output = "linear",
        noise_injection: bool = False,
    ) -> None:
        super().__init__()
        if output not in ("linear", "tanh"):
            raise ValueError(f"generator output must be 'linear' or 'tanh', got {output!r}")
        self.resolution, self.noise_dim, self.output = resolution, noise_dim, output
        channels = stage_channels(resolution, base_channels, max_channels)
        cond_dim = noise_dim + sentence_dim
        self.start_channels = channels[4]
        self.fc = nn.Linear(cond_dim, channels[4] * 4 * 4)
        sides = sorted(channels)
        self.blocks = nn.ModuleList(UpBlock(channels[s // 2], channels[s], cond_dim) for s in sides[1:])
        self.to_rgb = nn.Conv2d(channels[resolution], 3, 3, padding=1)
        unknown = sorted(set(attention_sides) - set(sides[1:]))
        if unknown:
            raise ValueError(
                f"attention sides {unknown} are not block outputs of a {resolution}px generator {sides[1:]}"
            )
        # Built last, so the sentence-only layers draw the same initial weights with or without them.
        self.attention = nn.ModuleDict({str(s): WordAttention(channels[s], word_dim) for s in sorted(attention_sides)})
        self.noise_strength = nn.ParameterDict()
        if noise_injection:  # built after everything else, for the same reason
            for s in sides[1:]:
                self.noise_strength[str(s)] = nn.Parameter(torch.zeros(channels[s]))  # starts as the plain generator
                # Unit-variance maps: each pixel a random mix of z's entries (z ~ N(0, I)).
                self.register_buffer(f"noise_basis_{s}", torch.randn(s * s, noise_dim) / noise_dim**0.5)

    def forward(
        self,
        z: torch.Tensor,
        sentence: torch.Tensor,
        words: torch.Tensor | None = None,
        padding: torch.Tensor | None = None,
        attention_maps: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Generate images (B, 3, resolution, resolution) from ``z`` (B, noise_dim) and ``sentence`` (B, D).

        With a linear output, values may leave [-1, 1]: the discriminator sees them as they are.

        ``words`` (B, L, word_dim) and their ``padding`` mask (B, L, True where ignored) are read by
        the attention stages, if any. A dict passed as ``attention_maps`` receives each stage's
        attention weights, ``{side: (B, side * side, L)}`` (each position's weights over the words).
        """
        if self.attention and (words is None or padding is None):
            raise ValueError("this generator attends to words: pass words and padding")
        cond = torch.cat([z, sentence], dim=1)  # (B, noise_dim + D)
        x = self.fc(cond).view(-1, self.start_channels, 4, 4)  # (B, C, 4, 4)
        for block in self.blocks:
            x = block(x, cond)  # side doubles each block
            side = str(x.shape[-1])
            if side in self.noise_strength:
                noise = (z @ getattr(self, f"noise_basis_{side}").t()).view(-1, 1, *x.shape[-2:])  # (B, 1, H, W)
                x = x + self.noise_strength[side][None, :, None, None] * noise
            # (a ModuleDict has no .get)
            attention = self.attention[side] if side in self.attention else None  # noqa: SIM401
            if attention is not None:
                if attention_maps is not None:
                    attention_maps[x.shape[-1]] = attention.weights(x, words, padding)
                x = attention(x, words, padding)
        rgb = self.to_rgb(F.leaky_relu(x, 0.2))  # (B, 3, H, W)
        return torch.tanh(rgb) if self.output == "tanh" else rgb
