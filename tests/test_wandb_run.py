"""The offline W&B run of a training job, read back with W&B's own inspector: one step axis, resumes continue it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.helpers import TINY, WANDB, history, inspect_run, run_cli, with_callbacks


def offline_runs(root: Path) -> list[Path]:
    return sorted(root.glob("runs/wandb/offline-run-*"))


def steps_of(rows: list[dict], prefix: str) -> list[int]:
    return [row["trainer/batch"] for row in rows if any(key.startswith(prefix) for key in row)]


def test_one_step_axis_and_a_resumed_run_continues_it(tmp_path, judge):
    # 3 batches (max_steps counts optimizer steps, two per batch); validation every 2 batches; train/* every
    # batch; 16 validation captions for the test-size R-precision.
    args = [*TINY, *with_callbacks(tmp_path, judge=judge), *WANDB, "--trainer.log_every_n_steps=1", "--data.val_size=16"]
    first = run_cli(["fit", *args, "--trainer.max_steps=6"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # Lines on every run that are not the user's business are filtered (issue 38's list).
    for noise in ("litlogger", "LeafSpec", "anonymous setting", "FLOPs", "LightningCLI's args parameter"):
        assert noise not in first.stderr + first.stdout, noise
    (run_folder,) = tmp_path.glob("runs/m2gan/*")
    (part1,) = offline_runs(tmp_path)
    rows = history(part1)
    assert rows and all(isinstance(row.get("trainer/batch"), int) for row in rows), "a record off the batch axis"
    assert steps_of(rows, "train/d_loss") == [1, 2, 3]
    assert steps_of(rows, "val/bleu4") == [2]  # Lightning's validation, on the same axis
    assert steps_of(rows, "samples.") == [3] and steps_of(rows, "sample_table.") == [3]  # the grid at the end
    assert steps_of(rows, "captions.") == [2]  # the caption table of the validation at batch 2
    for name in ("val/r_precision", "val/r_precision_real", "val/diversity", "val/diversity_same_caption_real"):
        assert steps_of(rows, name) == [2], name
    axes = [
        r["metric"] for r in inspect_run(part1) if r.get("type") == "metric" and r["metric"].get("glob_name") == "*"
    ]
    assert axes[-1]["step_metric"] == "trainer/batch"  # the x-axis of every panel (the last definition wins)
    summary = inspect_run(part1, "--summary")["summary"]
    fid = next(name for name in summary if name.startswith("val/fid"))
    assert set(summary[fid]) == {"min"} and set(summary["val/bleu4"]) == {"max"}
    assert summary["trainer/batch"] == 3  # the last step is the batches trained

    # Keep part 1's final checkpoint: resuming from it later would log batch 4 twice.
    shutil.copy(run_folder / "checkpoints" / "last.ckpt", tmp_path / "batch3.ckpt")
    # --ckpt_path last: the newest run's last.ckpt, continued in its own folder and W&B run.
    second = run_cli(["fit", *args, "--trainer.max_steps=8", "--ckpt_path=last"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {run_folder / 'checkpoints' / 'last.ckpt'}" in second.stderr
    assert f"continuing W&B run {run_folder.name} from batch 3" in second.stderr
    assert list(tmp_path.glob("runs/m2gan/*")) == [run_folder]  # same run folder
    assert (run_folder / "config.yaml").is_file() and (run_folder / "config.1.yaml").is_file()
    part2 = next(p for p in offline_runs(tmp_path) if p != part1)
    assert part2.name.endswith(run_folder.name)  # same W&B run id
    assert inspect_run(part2, "--summary")["run_id"] == run_folder.name
    rows2 = history(part2)
    assert steps_of(rows2, "train/d_loss") == [4] and steps_of(rows2, "val/bleu4") == [4]
    assert min(row["trainer/batch"] for row in rows2) == 4  # continues after part 1: no batch logged twice

    # From a checkpoint older than what the run logged: a new run, so batch 4 is not logged twice.
    (run_folder / "checkpoints" / "batch3.ckpt").write_bytes((tmp_path / "batch3.ckpt").read_bytes())
    third = run_cli(
        ["fit", *args, "--trainer.max_steps=8", f"--ckpt_path={run_folder / 'checkpoints' / 'batch3.ckpt'}"], tmp_path
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert "logged up to batch 4: starting a new W&B run" in third.stderr
    assert len(list(tmp_path.glob("runs/m2gan/*"))) == 2

    # A checkpoint that fails the data check is refused before W&B continues its run: nothing is
    # added to the run or W&B folders (a stray offline run of the same id would sync into the original).
    before = sorted(p for p in (tmp_path / "runs").rglob("*"))
    refused = run_cli(["fit", *args, "--data.max_length=30", "--trainer.max_steps=10", "--ckpt_path=last"], tmp_path)
    assert refused.returncode == 1
    said = [line for line in refused.stderr.splitlines() if line.strip()]
    assert said[0].startswith("resuming from") and len(said) == 2, refused.stderr  # then the refusal, one line
    assert re.match(r"error: --ckpt_path .*last.ckpt: the checkpoint's tokenizer differs", said[1]), said[1]
    assert sorted(p for p in (tmp_path / "runs").rglob("*")) == before


def test_log_model_stages_checkpoints_as_model_artifacts_offline(tmp_path, monkeypatch, datamodule, tiny_model):
    import pytorch_lightning as pl
    import wandb

    from callbacks import FinalCheckpoint
    from m2gan.loggers import AutoWandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # where W&B stages artifact files
    logger = AutoWandbLogger(save_dir=str(tmp_path / "runs"), log_model=True)
    # No periodic save in 2 batches: only the last.ckpt written as training ends.
    checkpoint = FinalCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1, every_n_train_steps=100)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=logger,
        callbacks=[checkpoint], enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(tiny_model, datamodule)
    run_folder = Path(logger.experiment.dir).parent
    wandb.finish()
    wandb.teardown()
    artifacts = [r["artifact"] for r in inspect_run(run_folder) if r.get("type") == "artifact"]
    models = [a for a in artifacts if a["type"] == "model"]
    assert models, f"no model artifact among {[a['type'] for a in artifacts]}"
    staged = {e["path"]: Path(e["local_path"]) for a in models for e in a["manifest"]["contents"]}
    assert staged["model.ckpt"].read_bytes() == (tmp_path / "ckpt" / "last.ckpt").read_bytes()  # for `wandb sync`
