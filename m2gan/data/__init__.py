"""Image-caption datasets and the Lightning data module that serves them."""

from m2gan.data.datamodule import ShapesDataModule
from m2gan.data.shapes import ShapesDataset

__all__ = ["ShapesDataModule", "ShapesDataset"]
