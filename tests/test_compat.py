"""Checkpoints and exports written before the objective/pipeline split still sample and resume.

``fixtures/m2gan-0.1.0-tiny.tar.gz`` was written by commit 0b1cd25 (before the split), with
``tests/test_resume.py``'s run interrupted after 3 batches (``step=6.ckpt``), that checkpoint's
export (format version 1), and the images and captions the old code drew from it.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import m2gan
from m2gan.model import M2GAN
from tests.helpers import train_tiny

FIXTURE = Path(__file__).parent / "fixtures" / "m2gan-0.1.0-tiny.tar.gz"
FIXTURE_TORCH = "2.14.1"  # the torch that wrote it


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("old")
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(folder, filter="data")
    return folder


@pytest.mark.parametrize("source", ["step=6.ckpt", "export"])
def test_old_checkpoints_and_exports_draw_and_caption_as_before(old, source):
    expected = json.loads((old / "expected.json").read_text())
    pipeline = m2gan.load(old / source)
    images = pipeline.generate(expected["prompts"], expected["num_images"], seed=expected["seed"])
    before = torch.from_numpy(np.load(old / "images.npy"))
    assert images.shape == before.shape
    assert (images.int() - before.int()).abs().max() <= 1  # another CPU may sum in another order
    assert pipeline.caption(before) == expected["captions"]


# Each network's weights after resuming from the fixture, as a relative L2 distance from the straight
# run's. Machine noise: the fixture's first 3 batches were summed in another order on the CPU that
# wrote it (AVX-512 vs AVX2, another oneDNN path), and 13 more GAN batches carry that on; measured
# on an AVX2 machine, at most 5e-5 (captioner; generator and discriminator 0). Real breaks move some
# network far more: resuming without the checkpoint's RNG states 0.07 (generator), without its
# optimizer states 0.04 (discriminator). 1e-3 sits 20x above the one and 30x below the others.
RESUME_TOLERANCE = 1e-3


def relative_distances(model: M2GAN, reference: M2GAN) -> dict[str, float]:
    """Per network, ||model - reference|| / ||reference|| over all its floating-point weights."""
    squares: dict[str, list[float]] = {}
    mine = model.state_dict()
    for name, value in reference.state_dict().items():
        if value.is_floating_point():
            sums = squares.setdefault(name.split(".")[0], [0.0, 0.0])
            sums[0] += (mine[name] - value).double().pow(2).sum().item()
            sums[1] += value.double().pow(2).sum().item()
    return {network: (diff / max(norm, 1e-30)) ** 0.5 for network, (diff, norm) in squares.items()}


@pytest.mark.skipif(
    torch.__version__.split("+")[0] != FIXTURE_TORCH,
    reason=f"the tolerance was measured with the torch that wrote the fixture ({FIXTURE_TORCH}); another "
    "torch may take other kernels",
)
def test_an_old_checkpoint_resumes_to_the_uninterruptedtrain_tiny(old, tmp_path):
    # The defaults the fixture was trained with.
    as_trained = {"generator_output": "tanh", "text_position_std": 0.02, "text_architecture": "transformer"}
    straight, _ = train_tiny(tmp_path / "straight", **as_trained)
    resumed, trainer = train_tiny(tmp_path / "resumed", ckpt_path=str(old / "step=6.ckpt"), **as_trained)
    assert trainer.global_step == 32
    assert int(resumed.d_steps) == int(straight.d_steps) == 16 and int(resumed.g_steps) == 16
    distances = relative_distances(resumed, straight)
    assert set(distances) >= {"text_encoder", "generator", "discriminator", "captioner", "ema"}
    assert max(distances.values()) <= RESUME_TOLERANCE, distances
    assert int(M2GAN.load(old / "step=6.ckpt").g_steps) == 3
