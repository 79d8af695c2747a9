"""Image-caption datasets and the Lightning data module that serves them."""

from m2gan.data.datamodule import CaptionDataModule
from m2gan.data.shapes import ShapesDataset

__all__ = ["CaptionDataModule", "ShapesDataset"]
