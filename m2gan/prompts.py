"""Prompt files (one prompt per line, blank lines skipped and counted) and the prediction dataset."""

from __future__ import annotations

import os

from torch.utils.data import Dataset


def read_prompts(path: str | os.PathLike) -> tuple[list[str], int]:
    """Read the prompts of a UTF-8 text file, one per line.

    Returns:
        The prompts (stripped of surrounding whitespace) and the number of blank lines skipped.

    Raises:
        ValueError: the file is missing, unreadable, not UTF-8, or holds no prompt; the message names it.
    """
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such prompt file") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:  # a folder, no permission, an I/O error
        raise ValueError(f"{path}: cannot read the prompt file ({error.strerror or error})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: holds no prompt (only blank lines)")
    return prompts, len(lines) - len(prompts)


class PromptDataset(Dataset):
    """Rows to draw for ``train.py predict``: every prompt ``num_images`` times, each row with its own noise seed.

    Items: ``{"prompt": str, "prompt_index": int, "image_index": int, "seed": int}``, batched into
    a :class:`~m2gan.batch.PromptBatch`; the seed of row ``r`` is ``seed + r``, so an image never
    depends on batch size or rank.
    """

    def __init__(self, prompts: list[str], num_images: int = 1, seed: int = 0) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        self.prompts, self.num_images, self.seed = prompts, num_images, seed

    def __len__(self) -> int:
        return len(self.prompts) * self.num_images

    def __getitem__(self, row: int) -> dict:
        prompt_index, image_index = divmod(row, self.num_images)
        return {
            "prompt": self.prompts[prompt_index],
            "prompt_index": prompt_index,
            "image_index": image_index,
            "seed": self.seed + row,
        }
