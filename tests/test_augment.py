"""DiffAugment's translation (m2gan.augment) and where the objective applies it."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from m2gan import augment
from tests.helpers import TINY_MODEL, model_of


def _shifted(image: torch.Tensor, down: int, right: int, reach: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    padded = F.pad(image, (reach, reach, reach, reach))
    return padded[..., reach - down : reach - down + height, reach - right : reach - right + width]


def test_translation_shifts_each_image_by_whole_pixels_within_its_reach():
    torch.manual_seed(0)
    images = torch.randn(32, 3, 16, 16)
    out = augment.translate(images, 0.125)  # reach 2 pixels
    found = []
    for image, seen in zip(images, out):
        shifts = [(a, b) for a in range(-2, 3) for b in range(-2, 3) if torch.equal(_shifted(image, a, b, 2), seen)]
        assert len(shifts) == 1, "each output is its input shifted by exactly one offset in reach"
        found.append(shifts[0])
    assert len(set(found)) > 5  # the offsets are drawn per image, not one for the batch
    assert augment.translate(images, 0.0) is images
    assert augment.translate(images, 0.01) is images  # under half a pixel: no shift


def test_translation_passes_gradients_to_the_shown_pixels():
    images = torch.randn(4, 3, 8, 8, requires_grad=True)
    augment.translate(images, 0.25).sum().backward()
    # Each pixel still inside the frame gets gradient 1, the pushed-out ones 0.
    assert set(images.grad.unique().tolist()) <= {0.0, 1.0} and images.grad.sum() > 0.5 * images.numel()


def test_both_players_losses_see_translated_images_only_when_on(datamodule, monkeypatch):
    model = model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, **TINY_MODEL)
    tokens = datamodule.tokenizer.encode(["a red circle", "a blue square"] * 2)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    seen = []

    def recorded(batch, ratio):
        seen.append((len(batch), ratio, batch.requires_grad))
        return batch.flip(-1)

    monkeypatch.setattr(augment, "translate", recorded)
    text = model.objective.discriminator_loss(images, tokens, penalty=False).text
    model.objective.generator_loss(images, text)
    assert seen == []  # off by default
    model.objective.config = dataclasses.replace(model.objective.config, augment_translation=0.125)
    text = model.objective.discriminator_loss(images, tokens, penalty=True).text
    model.objective.generator_loss(images, text)
    # The critic's step: real and generated together (the penalty's real images need gradient);
    # the generator's: its drawings, still attached to the generator.
    assert seen == [(8, 0.125, True), (4, 0.125, True)]
