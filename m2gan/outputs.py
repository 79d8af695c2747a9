"""Writing result folders all at once: a half-finished run never leaves half its files behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image


@contextlib.contextmanager
def staged_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir`` that becomes ``out_dir`` when the block succeeds.

    ``out_dir`` must not exist or be empty. On any error the temporary folder is removed and
    ``out_dir`` is left as it was.

    Raises:
        ValueError: ``out_dir`` holds files, or its parent cannot be written (the message names it).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: exists and is not an empty folder; choose another output folder")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as error:
        raise ValueError(f"{out_dir}: cannot write there ({error.strerror or error})") from None
    try:
        yield staging
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_images(folder: str | os.PathLike, images: torch.Tensor, entries: Sequence[dict], manifest: str) -> None:
    """Save uint8 ``images`` (N, 3, H, W) as PNGs named by ``entries[i]["file"]``; append the entries to ``manifest``."""
    folder = Path(folder)
    pixels = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    for array, entry in zip(pixels, entries, strict=True):
        Image.fromarray(array).save(folder / entry["file"])
    with open(folder / manifest, "a", encoding="utf-8") as file:
        for entry in entries:
            file.write(json.dumps(entry) + "\n")


def image_name(prompt_index: int, image_index: int) -> str:
    """File name of image ``image_index`` of prompt ``prompt_index``."""
    return f"{prompt_index:04d}_{image_index:02d}.png"


def write_images(
    folder: Path, images: torch.Tensor, prompts: Sequence[str], num_images: int, seed: int, truncation: float | None
) -> list[dict]:
    """Save ``generate``'s output as one PNG per image plus ``manifest.jsonl``; return the manifest rows.

    Each manifest row names the file, the prompt, the seed and ``noise_index``, the row of the
    call's noise the image was drawn from.
    """
    entries = []
    for row in range(images.shape[0]):
        i, k = divmod(row, num_images)
        entries.append(
            {"file": image_name(i, k), "prompt": prompts[i], "seed": seed, "noise_index": row, "truncation": truncation}
        )
    save_images(folder, images, entries, "manifest.jsonl")
    return entries
