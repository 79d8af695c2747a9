"""Exact resume: interrupted at step k and resumed, a run ends bit-identical to one that never stopped."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from m2gan.data import CaptionDataModule
from tests.helpers import SHAPES, train_tiny


def _same_training(resumed, resumed_trainer, straight, straight_trainer) -> None:
    assert resumed_trainer.global_step == straight_trainer.global_step == 32
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name  # generator, discriminator, EMA, counters
    for mine, theirs in zip(resumed_trainer.optimizers, straight_trainer.optimizers):
        for p_mine, p_theirs in zip(mine.state.values(), theirs.state.values()):
            for key in p_theirs:
                assert torch.equal(p_mine[key], p_theirs[key]), key


def _coco(folder) -> dict:
    """64 training and 8 validation images of varied sizes and colours as a COCO-format dataset, 2 captions each."""
    generator = torch.Generator().manual_seed(0)
    (folder / "annotations").mkdir(parents=True)
    for split, count in (("train", 64), ("val", 8)):
        (folder / f"{split}2017").mkdir()
        images, annotations = [], []
        for i in range(count):
            width, height = (int(v) for v in torch.randint(36, 60, (2,), generator=generator))
            pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"{split}2017" / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png"})
            for k, words in enumerate(("a red circle on the left", f"a picture number {i % 7}")):
                annotations.append({"id": 2 * i + k, "image_id": i, "caption": words})
        (folder / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": annotations})
        )
    return {"format": "coco", "root": str(folder), "batch_size": 8, "augment": True, "flip": True}


@pytest.mark.parametrize("data", ["shapes", "augmented coco"])
def test_resume_mid_epoch_is_bit_exact(tmp_path, data):
    data = SHAPES if data == "shapes" else _coco(tmp_path / "coco")
    straight, straight_trainer = train_tiny(tmp_path / "straight", data=data)  # 2 epochs of 8 batches
    # Interrupted after 3 batches (6 optimizer steps) of the first epoch, then resumed.
    train_tiny(tmp_path / "first", max_steps=6, save_every=6, data=data)
    (checkpoint,) = (tmp_path / "first").glob("*step=6.ckpt")
    resumed, resumed_trainer = train_tiny(tmp_path / "second", ckpt_path=str(checkpoint), data=data)
    _same_training(resumed, resumed_trainer, straight, straight_trainer)


def test_augmentation_is_a_function_of_the_visit(tmp_path):
    datamodule = CaptionDataModule(**_coco(tmp_path / "coco"))
    train = datamodule.datasets["train"]
    first, again, second = train[5], train[5], train[64 + 5]  # visit 0 twice, then visit 1 of image 5
    assert torch.equal(first["image"], again["image"]) and first["index"] == second["index"] == 5
    assert not torch.equal(first["image"], second["image"])  # another epoch, another crop


def test_a_run_stopped_by_max_steps_continues_when_resumed_with_more(tmp_path):
    straight, straight_trainer = train_tiny(tmp_path / "straight")
    # The job's own last.ckpt, written as max_steps stopped it mid-epoch, resumed with a larger max_steps.
    train_tiny(tmp_path / "first", max_steps=6, final_checkpoint=True)
    resumed, resumed_trainer = train_tiny(tmp_path / "second", ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    _same_training(resumed, resumed_trainer, straight, straight_trainer)
