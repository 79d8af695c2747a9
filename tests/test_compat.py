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
from tests.test_resume import _run

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


@pytest.mark.skipif(
    torch.__version__.split("+")[0] != FIXTURE_TORCH,
    reason=f"bit-identity holds with the kernels that wrote the fixture (torch {FIXTURE_TORCH}); "
    "another torch sums in another order and a GAN amplifies it",
)
def test_an_old_checkpoint_resumes_to_the_uninterrupted_run(old, tmp_path):
    straight, _ = _run(tmp_path / "straight")
    resumed, trainer = _run(tmp_path / "resumed", ckpt_path=str(old / "step=6.ckpt"))
    assert trainer.global_step == 32
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert int(M2GAN.load(old / "step=6.ckpt").g_steps) == 3
