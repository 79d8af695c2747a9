"""The networks of M2GAN, plain PyTorch: each file reads top to bottom and imports no Lightning."""

from m2gan.networks.attribute_classifier import AttributeClassifier
from m2gan.networks.captioner import Captioner
from m2gan.networks.discriminator import Discriminator
from m2gan.networks.dual_encoder import DualEncoder
from m2gan.networks.generator import Generator
from m2gan.networks.pretrained_text_encoder import PretrainedTextEncoder
from m2gan.networks.text_encoder import TextEncoder

__all__ = [
    "AttributeClassifier",
    "Captioner",
    "Discriminator",
    "DualEncoder",
    "Generator",
    "PretrainedTextEncoder",
    "TextEncoder",
]
