"""Lightning callbacks of M2GAN: they reach the model only through its public sampling pipeline (``model.ema``)."""

from callbacks.attribute_accuracy import AttributeAccuracy
from callbacks.caption_bleu import CaptionBLEU
from callbacks.checkpoint import FinalCheckpoint
from callbacks.collapse import CollapseAlarm
from callbacks.consistency import TextImageConsistency
from callbacks.fid import FID
from callbacks.image_writer import ImageWriter
from callbacks.sample_grid import SampleGrid

__all__ = [
    "FID",
    "AttributeAccuracy",
    "CaptionBLEU",
    "CollapseAlarm",
    "FinalCheckpoint",
    "ImageWriter",
    "SampleGrid",
    "TextImageConsistency",
]
