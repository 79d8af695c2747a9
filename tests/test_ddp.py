"""Two CPU processes (DDP over gloo) train the GAN, count every validation sample exactly once, and resume
exactly. The DDP runs are child processes (Lightning starts the second rank as one); the single-process
runs run in this process."""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers import TINY, checkpoints, run_cli, run_train, with_callbacks

DDP = ["--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.devices=2", "--trainer.accelerator=cpu"]
# 29 validation images over 2 ranks: Lightning's distributed sampler pads rank 1 with a repeat of
# sample 0, which must not be counted twice; batches of 8 split 4 + 4 end in a short batch.
VALIDATION = ["--data.val_size=29", "--trainer.limit_val_batches=1.0"]


def _metrics(stdout: str) -> dict[str, float]:
    """The metric table Lightning prints at the end of ``validate`` (plain, or drawn with rich's box characters)."""
    row = r"^[\s│|]*(val/[\w/]+)[\s│|]+([-+0-9.eE]+)[\s│|]*$"
    return {name: float(value) for name, value in re.findall(row, stdout, re.MULTILINE)}


@pytest.mark.slow
def test_ddp_validates_like_one_process(tmp_path, judge):
    args = [*TINY, *with_callbacks(tmp_path, judge=judge), *VALIDATION]
    trained = run_cli(["fit", *args, "--trainer.limit_val_batches=0"], tmp_path)  # DDP training: the next test
    assert trained.returncode == 0, trained.stderr[-3000:]
    (last,) = checkpoints(tmp_path)

    single = run_cli(["validate", *args, f"--ckpt_path={last}"], tmp_path)
    double = run_train(["validate", *args, *DDP, f"--ckpt_path={last}"], tmp_path)
    assert single.returncode == 0 and double.returncode == 0, (single.stderr + double.stderr)[-3000:]
    one, two = _metrics(single.stdout), _metrics(double.stdout)
    counted_once = [n for n in one if "bleu" in n or "fid" in n or "attr_acc" in n]
    assert len(counted_once) >= 8, one  # bleu1..4, cycle_bleu4, fid_shapes_2k, attr_acc/*
    for name in counted_once:
        assert two[name] == pytest.approx(one[name], rel=1e-5, abs=1e-7), name


@pytest.mark.slow
def test_ddp_trains_and_resumes_mid_epoch_bit_exact(tmp_path):
    # One straight run of 2 epochs (4 batches each) saves a checkpoint after batch 3, mid-epoch; a
    # second run resumes from it. Both end at batch 8 with the same weights, bit for bit.
    every_3_batches = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {
        "dirpath": str(tmp_path / "mid"), "filename": "{step}", "every_n_train_steps": 6, "save_top_k": -1}}  # fmt: skip
    args = ["fit", *TINY, *with_callbacks(tmp_path, every_3_batches), *DDP, "--trainer.limit_val_batches=0",
            "--trainer.max_epochs=2", "--trainer.deterministic=true", "--trainer.max_steps=16"]  # fmt: skip
    straight = run_train(args, tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    (expected,) = checkpoints(tmp_path)
    middle = tmp_path / "mid" / "step=6.ckpt"
    assert torch.load(middle, weights_only=True)["global_step"] == 6
    resumed = run_train([*args, f"--ckpt_path={middle}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {middle}" in resumed.stderr  # not a fresh start
    (final,) = set(checkpoints(tmp_path)) - {expected}
    expected, final = (torch.load(p, weights_only=True) for p in (expected, final))
    assert final["global_step"] == expected["global_step"] == 16
    for name, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], value), name
