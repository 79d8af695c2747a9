"""Crash-safe checkpoints: a kill at any moment, even mid-write, leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from m2gan.checkpoint_io import AtomicCheckpointIO
from m2gan.model import M2GAN
from tests.helpers import ROOT, TINY, run_cli


def _start(args: list[str], cwd) -> subprocess.Popen:
    """``train.py fit`` in a child process: the process boundary is the subject (it is killed)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "train.py"), "fit", *TINY, *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(process: subprocess.Popen, ready, delay: float = 0.0, timeout: float = 240) -> None:
    """SIGKILL ``process`` ``delay`` seconds after ``ready()`` first holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.05)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _newest_last(folder) -> tuple:
    newest = max(folder.glob("runs/m2gan/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return newest, int(M2GAN.load(newest).g_steps)


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
checkpoint: {{dirpath: {ckpt}, every_n_train_steps: 2}}
""")
    process = _start([f"--config={config}", "--trainer.max_steps=8"], tmp_path)
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

    # Resume from it (in this process: no kill now): at most the steps since that checkpoint are lost.
    resumed = run_cli(["fit", *TINY, f"--ckpt_path={ckpt / 'last.ckpt'}", "--trainer.max_steps=8"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (final,) = tmp_path.glob("runs/m2gan/*/checkpoints/last.ckpt")
    assert int(M2GAN.load(final).g_steps) == 4


@pytest.mark.slow
def test_sigkill_at_several_points_of_training_then_resume(tmp_path):
    """Killed after its first checkpoints, between two later ones, and while starting up: resume finishes the run."""
    config = tmp_path / "slow.yaml"
    config.write_text("""
trainer:
  max_epochs: -1
  max_steps: 24           # 12 batches
  callbacks:
    - class_path: tests.slow_io.SlowBatches
      init_args: {pause: 0.25}
checkpoint: {every_n_train_steps: 4}
""")
    args = [f"--config={config}", "--trainer.limit_val_batches=0"]

    def files() -> list:
        return list(tmp_path.glob("runs/m2gan/*/checkpoints/step=*.ckpt"))


    # 1. Killed during training, right after its second periodic checkpoint (4 of 12 batches).
    _kill_when(_start(args, tmp_path), lambda: len(files()) >= 2)
    last, done = _newest_last(tmp_path)
    assert done >= 2  # the kill may land in the last.ckpt write after step=8: then the one before survives

    # 2. Resumed, then killed between two checkpoints: about a batch after its first one.
    before = len(files())
    _kill_when(_start([*args, "--ckpt_path=last"], tmp_path), lambda: len(files()) > before, delay=0.3)
    last, resumed_to = _newest_last(tmp_path)
    assert resumed_to > done  # the resumed run progressed and its checkpoint is whole

    # 3. Resumed, and killed while still starting up: the newest checkpoint is untouched.
    mtime = last.stat().st_mtime
    _kill_when(_start([*args, "--ckpt_path=last"], tmp_path), lambda: True, delay=1.0)
    assert _newest_last(tmp_path) == (last, resumed_to) and last.stat().st_mtime == mtime

    # 4. Resumed to the end (in this process: no kill now): all 12 batches done, nothing lost beyond
    # the steps since a checkpoint.
    final = run_cli(["fit", *TINY, *args, "--ckpt_path=last"], tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"resuming from {last}" in final.stderr
    assert _newest_last(tmp_path)[1] == 12
