"""Sampling results on disk: one PNG per image and a JSON-lines manifest of what each one is."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image


def save_images(folder: str | os.PathLike, images: torch.Tensor, entries: Sequence[dict], manifest: str) -> None:
    """Save uint8 ``images`` (N, 3, H, W) as PNGs named by ``entries[i]["file"]``; append the entries to ``manifest``."""
    folder = Path(folder)
    pixels = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    for array, entry in zip(pixels, entries, strict=True):
        Image.fromarray(array).save(folder / entry["file"])
    with open(folder / manifest, "a", encoding="utf-8") as file:
        for entry in entries:
            file.write(json.dumps(entry) + "\n")


def image_name(prompt_index: int, image_index: int, num_prompts: int = 1, num_images: int = 1) -> str:
    """File name of image ``image_index`` of prompt ``prompt_index``: ``0007_03.png``.

    Numbers are padded to at least 4 and 2 digits, and to the digits of ``num_prompts - 1`` and
    ``num_images - 1``, so the names of one run sort in row order.
    """
    prompt_digits, image_digits = max(4, len(str(num_prompts - 1))), max(2, len(str(num_images - 1)))
    return f"{prompt_index:0{prompt_digits}d}_{image_index:0{image_digits}d}.png"


def write_images(
    folder: Path,
    images: torch.Tensor,
    first_row: int,
    prompts: Sequence[str],
    num_images: int,
    seed: int,
    truncation: float | None,
) -> list[dict]:
    """Save rows ``first_row …`` of ``generate``'s output as PNGs and append them to ``manifest.jsonl``.

    Each manifest row names the file, the prompt, the seed and ``noise_index``, the row of the
    call's noise the image was drawn from.
    """
    entries = []
    for row in range(first_row, first_row + images.shape[0]):
        i, k = divmod(row, num_images)
        name = image_name(i, k, len(prompts), num_images)
        entries.append({"file": name, "prompt": prompts[i], "seed": seed, "noise_index": row, "truncation": truncation})
    save_images(folder, images, entries, "manifest.jsonl")
    return entries
