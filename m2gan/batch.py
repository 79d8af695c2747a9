"""The batches that flow from the data module to the model and the callbacks, in one place.

Plain dictionaries (Lightning moves them between devices and DDP pads them as they are), typed so
that every reader and writer names the same keys.
"""

from __future__ import annotations

from typing import TypedDict

import torch


class CaptionBatch(TypedDict):
    """A training batch of image-caption pairs (``CaptionDataModule.collate``)."""

    image: torch.Tensor
    """(B, 3, H, W) float images in [-1, 1]."""
    tokens: torch.Tensor
    """(B, L) long token ids of ``caption``: ``[BOS] … [EOS]`` then ``[PAD]``."""
    paraphrase: torch.Tensor
    """(B, L) long token ids of another caption of each image (the same caption where it has one only)."""
    caption: list[str]
    """The caption drawn for each image at this visit."""
    index: torch.Tensor
    """(B,) long: each sample's index in its split's dataset (evaluation counts each image once by it)."""


class EvaluationBatch(CaptionBatch):
    """A validation or test batch: a training batch plus every reference caption of each image."""

    references: list[list[str]]
    """All captions of each image (at most ``data.num_references``), for caption metrics."""


class PromptBatch(TypedDict):
    """A ``train.py predict`` batch (``m2gan.prompts.PromptDataset``): one image to draw per row."""

    prompt: list[str]
    prompt_index: torch.Tensor
    """(B,) which prompt of the prompts file each row draws."""
    image_index: torch.Tensor
    """(B,) which image of that prompt."""
    seed: torch.Tensor
    """(B,) the noise seed of each row (prediction seed + row), so an image never depends on its batch."""
