"""Two CPU processes (DDP over gloo) train the GAN, count every validation sample exactly once, and resume
exactly."""

from __future__ import annotations

import re

import pytest

from tests.test_train_cli import TINY, checkpoints, run_train

DDP = ["--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.devices=2", "--trainer.accelerator=cpu"]
# 29 validation images over 2 ranks: Lightning's distributed sampler pads rank 1 with a repeat of
# sample 0, which must not be counted twice; batches of 8 split 4 + 4 end in a short batch.
VALIDATION = ["--data.val_size=29", "--trainer.limit_val_batches=1.0"]


def _metrics(stdout: str) -> dict[str, float]:
    """The metric table Lightning prints at the end of ``validate`` (plain, or drawn with rich's box characters)."""
    row = r"^[\s│|]*(val/[\w/]+)[\s│|]+([-+0-9.eE]+)[\s│|]*$"
    return {name: float(value) for name, value in re.findall(row, stdout, re.M)}


@pytest.mark.slow
def test_ddp_trains_and_validates_like_one_process(tmp_path):
    trained = run_train(["fit", *TINY, *DDP, *VALIDATION], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (last,) = checkpoints(tmp_path)

    single = run_train(["validate", *TINY, *VALIDATION, f"--ckpt_path={last}"], tmp_path)
    double = run_train(["validate", *TINY, *VALIDATION, *DDP, f"--ckpt_path={last}"], tmp_path)
    assert single.returncode == 0 and double.returncode == 0, (single.stderr + double.stderr)[-3000:]
    one, two = _metrics(single.stdout), _metrics(double.stdout)
    counted_once = [n for n in one if "bleu" in n or "fid" in n or "attr_acc" in n]
    assert len(counted_once) >= 8, one  # bleu1..4, cycle_bleu4, fid_shapes_2k, attr_acc/*
    for name in counted_once:
        assert two[name] == pytest.approx(one[name], rel=1e-5, abs=1e-7), name


@pytest.mark.slow
def test_ddp_resume_mid_epoch_is_bit_exact(tmp_path):
    import torch

    args = [
        "fit",
        *TINY,
        *DDP,
        "--trainer.limit_val_batches=0",
        "--trainer.max_epochs=2",
        "--trainer.deterministic=true",
    ]
    for folder in ("straight", "resumed"):
        (tmp_path / folder).mkdir()
    straight = run_train([*args, "--trainer.max_steps=16"], tmp_path / "straight")  # 2 epochs of 4 batches
    # stopped after 3 batches of the first epoch, resumed from that run's own last.ckpt
    first = run_train([*args, "--trainer.max_steps=6"], tmp_path / "resumed")
    resumed = run_train([*args, "--trainer.max_steps=16", "--ckpt_path=last"], tmp_path / "resumed")
    for result in (straight, first, resumed):
        assert result.returncode == 0, result.stderr[-3000:]
    (expected,) = checkpoints(tmp_path / "straight")
    final = max(checkpoints(tmp_path / "resumed"), key=lambda p: p.stat().st_mtime)
    expected, final = (torch.load(p, weights_only=True) for p in (expected, final))
    assert final["global_step"] == expected["global_step"] == 16
    for name, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], value), name
