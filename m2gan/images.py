"""Turning user images (files, PIL images, tensors) into model input, with errors that name the input."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

MIN_SIDE = 8
"""Smallest accepted image side in pixels: below it there is nothing left to describe."""

ImageInput = str | os.PathLike | Image.Image


def load_image(image: ImageInput, resolution: int) -> torch.Tensor:
    """Read one image as (3, resolution, resolution) float in [-1, 1].

    Files are opened with PIL; grayscale, palette, RGBA and CMYK images are converted to RGB. The
    shorter side is resized to ``resolution`` and the centre is cropped square.

    Raises:
        ValueError: naming the file when it is missing, not an image, or smaller than :data:`MIN_SIDE`.
    """
    name = str(image) if not isinstance(image, Image.Image) else "PIL image"
    if not isinstance(image, Image.Image):
        if not os.path.isfile(image):
            raise ValueError(f"{name}: no such file")
        try:
            with Image.open(image) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(f"{name}: not a readable image ({error})") from None
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"{name}: image is {width}x{height} pixels; each side needs at least {MIN_SIDE}")
    image = image.convert("RGB")
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)  # (3, R, R)
    return pixels / 127.5 - 1


def prepare_images(images: torch.Tensor | Sequence[ImageInput] | ImageInput, resolution: int) -> torch.Tensor:
    """Batch images for a model: (N, 3, resolution, resolution) float in [-1, 1].

    Args:
        images: A tensor (N, 3, H, W) or (3, H, W) — uint8 in [0, 255] or float in [-1, 1] — or
            one or several file paths or PIL images.
        resolution: The model's image side; tensors are centre-cropped square and resized (antialiased)
            like files.
    """
    if not isinstance(images, torch.Tensor):
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        if len(images) == 0:
            raise ValueError("no images given")
        return torch.stack([load_image(image, resolution) for image in images])
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be RGB, shaped (N, 3, H, W) or (3, H, W); got {tuple(images.shape)}")
    if min(images.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"images are {images.shape[-1]}x{images.shape[-2]} pixels; each side needs {MIN_SIDE}")
    images = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
    height, width = images.shape[-2:]
    if height != width:  # centre-crop to a square, as for files
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        images = images[..., top : top + side, left : left + side]
    if images.shape[-1] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True)
    return images
