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


def attention_grid(
    image: torch.Tensor, words: Sequence[str], maps: dict[int, torch.Tensor], scale: int = 4
) -> Image.Image:
    """One row per attention stage: the image, then each word's map over it (a heat map on the image).

    Args:
        image: uint8 (3, H, W).
        words: The prompt's words, one map each.
        maps: Per stage side, (len(words), side, side) weights (:meth:`SamplingPipeline.attention_maps`).
        scale: Nearest-neighbour up-scaling of the image and the maps.
    """
    size = (image.shape[2] * scale, image.shape[1] * scale)
    base = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size, Image.NEAREST)
    grey = base.convert("L").convert("RGB")
    padding, text_height = 2, 14
    columns, rows = 1 + len(words), max(1, len(maps))
    canvas = Image.new(
        "RGB", (padding + columns * (size[0] + padding), padding + rows * (text_height + size[1] + padding)), "black"
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, (side, stage) in enumerate(sorted(maps.items())):
        # Brightness: how far above uniform (1 / positions) a word attends there, relative to the
        # stage's strongest; a word that attends everywhere alike stays dark.
        above = (stage * side * side - 1).clamp_min(0)  # (words, side, side)
        stage = above / above.max().clamp_min(1e-6)
        top = padding + r * (text_height + size[1] + padding)
        draw.text((padding, top), f"{side}x{side}", fill="white", font=font)
        canvas.paste(base, (padding, top + text_height))
        for c, (word, weights) in enumerate(zip(words, stage, strict=True), start=1):
            heat = weights.numpy()  # (side, side) in [0, 1]
            # A "hot" colour map: black -> red -> yellow -> white as the weight grows.
            rgb = (torch.from_numpy(heat)[..., None] * 3 - torch.tensor([0.0, 1.0, 2.0])).clamp(0, 1)
            layer = Image.fromarray((rgb * 255).round().to(torch.uint8).numpy()).resize(size, Image.NEAREST)
            left = padding + c * (size[0] + padding)
            draw.text((left, top), word, fill="white", font=font)
            canvas.paste(Image.blend(grey, layer, 0.6), (left, top + text_height))
    return canvas


def stacked(images: Sequence[Image.Image], padding: int = 4) -> Image.Image:
    """Images one below the other, left-aligned, on black."""
    width = max(image.width for image in images)
    canvas = Image.new("RGB", (width, sum(image.height + padding for image in images) - padding), "black")
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height + padding
    return canvas
