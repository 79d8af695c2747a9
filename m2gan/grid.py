"""Sample grids: rows of generated images with the prompt written above each row."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont


def prompt_grid(images: torch.Tensor, prompts: Sequence[str], scale: int = 2, padding: int = 2) -> Image.Image:
    """Lay out ``images`` as one row per prompt, the prompt written above its row.

    Args:
        images: uint8 (len(prompts) * n, 3, H, W), the ``n`` images of prompt ``i`` consecutive
            (the order :meth:`m2gan.model.M2GAN.generate` returns).
        prompts: One caption per row.
        scale: Nearest-neighbour up-scaling of each image, so small images stay legible.
        padding: Pixels between images.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError("images must be a uint8 tensor (N, 3, H, W)")
    rows = len(prompts)
    if rows == 0 or images.shape[0] % rows:
        raise ValueError(f"{images.shape[0]} images cannot be split into {rows} equal rows")
    per_row = images.shape[0] // rows
    height, width = images.shape[2] * scale, images.shape[3] * scale
    font = ImageFont.load_default()
    text_height = 14
    canvas = Image.new(
        "RGB", (padding + per_row * (width + padding), rows * (text_height + height + padding) + padding), "black"
    )
    draw = ImageDraw.Draw(canvas)
    pixels = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    for r, prompt in enumerate(prompts):
        top = padding + r * (text_height + height + padding)
        draw.text((padding, top), prompt, fill="white", font=font)
        for c in range(per_row):
            tile = Image.fromarray(pixels[r * per_row + c]).resize((width, height), Image.NEAREST)
            canvas.paste(tile, (padding + c * (width + padding), top + text_height))
    return canvas
