"""Attribute classifier: an image -> one label per attribute (e.g. shape, colour, size, position).

Trained on real images with known attributes, it judges whether generated images show what their
prompt asked for. Several linear heads read one convolutional trunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AttributeClassifier(nn.Module):
    """Predict one categorical label per attribute from an image.

    Args:
        num_classes: Attribute name -> number of classes, e.g. ``{"shape": 4, "colour": 7}``.
        channels: Channels of the three convolution stages.
    """

    def __init__(self, num_classes: dict[str, int], channels: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.trunk = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.BatchNorm2d(c3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),  # (B, c3 * 16): keeps a coarse layout for position
        )
        self.heads = nn.ModuleDict({name: nn.Linear(c3 * 16, n) for name, n in num_classes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute, each (B, num_classes[name]), for images (B, 3, H, W) in [-1, 1]."""
        features = self.trunk(images)
        return {name: head(features) for name, head in self.heads.items()}

    def loss(self, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy over attributes."""
        logits = self(images)
        return sum(F.cross_entropy(logits[name], labels[name]) for name in self.heads)
