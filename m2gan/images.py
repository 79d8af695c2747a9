"""Turning user images (files, PIL images, tensors) into model input, with errors that name the input."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

MIN_SIDE = 8
"""Smallest accepted image side in pixels: below it there is nothing left to describe."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File name endings (lower case) read as images where a folder is listed."""

ImageInput = str | os.PathLike | Image.Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → uint8 in [0, 255], rounded to the nearest level (any shape, any device)."""
    # One temporary, then in place: at sampling sizes each extra temporary costs a full pass.
    return images.float().add(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] → float in [-1, 1]; float images are returned as float, unchanged."""
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit grey scaled down (not clipped), transparency over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.int64)
        top = 65535 if pixels.max(initial=0) > 255 else 255
        image = Image.fromarray((pixels.clip(0, top) * 255 // top).astype(np.uint8), mode="L")
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((pixels.clip(0, 1) * 255).round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def decode_image(
    source: str | os.PathLike | IO[bytes], resolution: int, box: tuple[float, float, float, float] | None = None
) -> Image.Image:
    """Open an image file (or file object) as RGB, cropped to ``box`` (x, y, w, h in pixels) if given.

    A JPEG much larger than ``resolution`` is decoded at a reduced scale (libjpeg's DCT scaling,
    PIL's ``draft``), so huge photographs never occupy full-size memory. PIL's decompression-bomb
    guard stays on for other formats.

    Raises:
        ValueError: the file is missing, not an image, truncated, or smaller than :data:`MIN_SIDE`.
    """
    name = str(getattr(source, "name", source))
    try:
        with Image.open(source) as opened:
            full_size = opened.size
            needed = resolution * max(full_size) // max(1, min(full_size))  # longest side after resizing
            if box is not None:
                needed = needed * max(full_size) // max(1, int(min(box[2], box[3])))
            opened.draft("RGB", (needed, needed))  # a no-op for formats other than JPEG
            opened.load()
            image = opened.copy()
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{name}: not a readable image ({error})") from None
    if box is not None:
        scale = image.size[0] / full_size[0]
        x, y, w, h = (v * scale for v in box)
        image = image.crop((round(x), round(y), round(x + w), round(y + h)))
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"{name}: image is {width}x{height} pixels; each side needs at least {MIN_SIDE}")
    return to_rgb(image)


def resize_and_crop(
    image: Image.Image, resolution: int, rng: np.random.Generator | None = None, flip: bool = False
) -> torch.Tensor:
    """Resize the shorter side and crop square: (3, resolution, resolution) float in [-1, 1].

    Without ``rng`` the crop is centred. With it, the shorter side is resized to 9/8 of
    ``resolution`` and the crop is placed at random (AttnGAN-style augmentation); ``flip`` then
    mirrors half the images.
    """
    side = resolution if rng is None else round(resolution * 9 / 8)
    width, height = image.size
    scale = side / min(width, height)
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    if rng is None:
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    else:
        left, top = int(rng.integers(size[0] - resolution + 1)), int(rng.integers(size[1] - resolution + 1))
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip and rng is not None and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)  # (3, R, R)
    return pixels / 127.5 - 1


def load_image(image: ImageInput, resolution: int) -> torch.Tensor:
    """Read one image as (3, resolution, resolution) float in [-1, 1].

    Files are opened with PIL (:func:`decode_image`): grayscale, 16-bit, palette, RGBA and CMYK
    images are converted to RGB. The shorter side is resized to ``resolution`` and the centre is
    cropped square.

    Raises:
        ValueError: naming the file when it is missing, not an image, or smaller than :data:`MIN_SIDE`.
    """
    if isinstance(image, Image.Image):
        width, height = image.size
        if min(width, height) < MIN_SIDE:
            raise ValueError(f"PIL image: image is {width}x{height} pixels; each side needs at least {MIN_SIDE}")
        return resize_and_crop(to_rgb(image), resolution)
    if not os.path.isfile(image):
        raise ValueError(f"{image}: no such file")
    return resize_and_crop(decode_image(image, resolution), resolution)


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
    images = to_float(images)
    if not torch.isfinite(images).all():
        raise ValueError("images hold NaN or infinite values")
    height, width = images.shape[-2:]
    if height != width:  # centre-crop to a square, as for files
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        images = images[..., top : top + side, left : left + side]
    if images.shape[-1] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True)
    return images
