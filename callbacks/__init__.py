"""Lightning callbacks of M2GAN: they reach the model only through its public sampling methods."""

from callbacks.caption_bleu import CaptionBLEU
from callbacks.checkpoint import FinalCheckpoint
from callbacks.image_writer import ImageWriter
from callbacks.sample_grid import SampleGrid

__all__ = ["CaptionBLEU", "FinalCheckpoint", "ImageWriter", "SampleGrid"]
