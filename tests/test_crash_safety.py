"""Crash-safe checkpoints: a kill at any moment, even mid-write, leaves the previous checkpoint loadable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from m2gan.checkpoint_io import AtomicCheckpointIO
from m2gan.model import M2GAN
from tests.test_train_cli import ROOT, TINY


def test_a_failed_write_leaves_the_previous_file_and_no_debris(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    class Interrupted(AtomicCheckpointIO):
        def write(self, checkpoint, target):
            with open(target, "wb") as file:
                file.write(b"half a checkpoint")
            raise KeyboardInterrupt  # as if the process were stopped here

    with pytest.raises(KeyboardInterrupt):
        Interrupted().save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_then_resume(tmp_path):
    ckpt = tmp_path / "ckpt"
    config = tmp_path / "slow.yaml"
    # Writes: step=2.ckpt, last.ckpt, step=4.ckpt, then last.ckpt again — the 4th is slowed and killed.
    config.write_text(f"""
trainer:
  plugins:
    - class_path: tests.slow_io.SlowCheckpointIO
      init_args: {{slow_from: 4, marker: {tmp_path / "writing"}}}
  callbacks:
    - class_path: callbacks.FinalCheckpoint
      init_args: {{dirpath: {ckpt}, filename: "{{step}}", save_last: true, save_top_k: -1, every_n_train_steps: 2}}
""")
    env = {"WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "train.py"), "fit", *TINY, f"--config={config}", "--trainer.max_steps=8"]
    process = subprocess.Popen(command, cwd=tmp_path, env={**__import__("os").environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (tmp_path / "writing").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the slowed write never started"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()

    # The kill hit the second write of last.ckpt: the first one (after step 2) is intact.
    model = M2GAN.load(ckpt / "last.ckpt")
    assert int(model.g_steps) == 1
    assert M2GAN.load(ckpt / "step=4.ckpt").g_steps == 2
    assert {p.name for p in ckpt.iterdir() if p.suffix == ".ckpt"} == {"last.ckpt", "step=2.ckpt", "step=4.ckpt"}

    # Resume from it: at most the steps since that checkpoint are lost.
    resumed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", *TINY, f"--ckpt_path={ckpt / 'last.ckpt'}", "--trainer.max_steps=8"],
        cwd=tmp_path, env={**__import__("os").environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (final,) = tmp_path.glob("runs/m2gan/*/checkpoints/last.ckpt")
    assert int(M2GAN.load(final).g_steps) == 4
