"""Callbacks: the final checkpoint is never stale; sample grids carry their prompts; caption BLEU counts right."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from callbacks import CaptionBLEU, FinalCheckpoint, SampleGrid
from m2gan.eval.bleu import corpus_bleu
from m2gan.loggers import AutoWandbLogger
from m2gan.model import M2GAN
from tests.helpers import inspect_run


def _trainer(tmp_path, callbacks, batches):
    return pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


def test_last_checkpoint_holds_the_final_weights(tmp_path, datamodule, tiny_model):
    checkpoint = FinalCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=4, save_top_k=-1)
    _trainer(tmp_path, [checkpoint], batches=3).fit(tiny_model, datamodule)
    # 3 batches = 6 optimizer steps: a periodic save at step 4, the end at step 6
    assert [p.name for p in (tmp_path / "ckpt").glob("*step=4.ckpt")] == ["epoch=0-step=4.ckpt"]
    restored = M2GAN.load(tmp_path / "ckpt" / "last.ckpt")
    assert int(restored.g_steps) == 3
    for name, value in tiny_model.ema.generator.state_dict().items():
        torch.testing.assert_close(restored.ema.generator.state_dict()[name], value)


def test_sample_grid_writes_pngs_with_one_row_per_prompt(tmp_path, datamodule, tiny_model):
    prompts = ["a red circle at the left", "a small blue square at the top"]
    grid = SampleGrid(prompts, every_n_batches=1, num_images=3)
    trainer = _trainer(tmp_path, [grid], batches=2)
    trainer.fit(tiny_model, datamodule)
    pngs = sorted((tmp_path / "samples").glob("batch_*.png"))
    assert [p.name for p in pngs] == ["batch_0000001.png", "batch_0000002.png"]
    table = [json.loads(line) for line in (tmp_path / "samples" / "batch_0000002.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in table] == prompts and all(len(row["captions"]) == 3 for row in table)
    width, height = Image.open(pngs[-1]).size
    assert height > 2 * 32 * grid.scale and width >= 3 * 32 * grid.scale


def test_sample_grid_without_prompts_draws_the_first_validation_captions(tmp_path, datamodule, tiny_model):
    val = datamodule.datasets["val"]
    expected = list(dict.fromkeys(val.caption(i) for i in range(len(val))))[:3]
    _trainer(tmp_path, [SampleGrid(None, every_n_batches=100, num_images=1, num_prompts=3)], batches=1).fit(
        tiny_model, datamodule
    )
    (table,) = (tmp_path / "samples").glob("batch_*.jsonl")  # the grid drawn at the end of training
    assert [json.loads(line)["prompt"] for line in table.read_text().splitlines()] == expected


def test_sample_grid_logs_images_and_a_table_into_the_offline_wandb_run(tmp_path, datamodule, tiny_model):
    import wandb

    prompts = ["a red circle at the left", "a small blue square at the top"]
    logger = AutoWandbLogger(save_dir=str(tmp_path), project="m2gan")
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=logger,
        callbacks=[SampleGrid(prompts, every_n_batches=100, num_images=2)], enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(tiny_model, datamodule)
    run_folder = Path(logger.experiment.dir).parent
    wandb.finish()
    wandb.teardown()  # stops W&B's service and unsets WANDB_SERVICE, which later child processes would inherit
    # Read the run back with W&B's own inspector of its transaction log, not by guessing file names.
    records = inspect_run(run_folder)
    items = [record["history"]["item"] for record in records if record.get("type") == "history"]
    # Nested values come flattened: "samples._type", "sample_table.path", …
    logged = {key: value for item in items for key, value in item.items()}
    images = {k.split(".", 1)[1]: v for k, v in logged.items() if k.startswith("samples.")}
    table = {k.split(".", 1)[1]: v for k, v in logged.items() if k.startswith("sample_table.")}
    assert images["_type"] == "images/separated" and images["captions"] == prompts
    assert all((run_folder / "files" / name).is_file() for name in images["filenames"])
    assert table["_type"] == "table-file" and table["nrows"] == len(prompts)
    # A table with images is stored as a W&B artifact: its manifest names the table and each image.
    (artifact,) = [
        r["artifact"] for r in records if r.get("type") == "artifact" and r["artifact"]["name"].endswith("sample_table")
    ]
    files = {entry["path"]: Path(entry["local_path"]) for entry in artifact["manifest"]["contents"]}
    rows = json.loads(files["sample_table.table.json"].read_text())
    assert rows["columns"] == ["prompt", "samples", "captions of the samples"]
    assert [row[0] for row in rows["data"]] == prompts
    for _, image, captions in rows["data"]:
        assert image["_type"] == "image-file" and files[image["path"]].is_file()
        assert len(captions.split(" | ")) == 2  # one caption per sample


class _CaptioningModel:
    """Stands in for M2GAN: an image's caption is looked up from its pixel value; generate draws a prompt's id."""

    def __init__(self, captions: dict[int, str]) -> None:
        self.captions, self.prompts, self.logged = captions, [], {}
        self.batches_trained = 5
        self.tokenizer = SimpleNamespace(normalize=lambda caption: " ".join(caption.lower().split()))
        self.ema = self  # the sampling pipeline's methods are this stand-in's own

    def caption(self, images, num_beams=1):
        values = [int(v) for v in images[:, 0, 0, 0].tolist()]
        return [self.prompts[v - 1000] if v >= 1000 else self.captions[v] for v in values]

    def generate(self, prompts, num_images=1, seed=0):
        ids = []
        for prompt in prompts:
            if prompt not in self.prompts:
                self.prompts.append(prompt)
            ids.append(1000 + self.prompts.index(prompt))
        return torch.tensor(ids, dtype=torch.float).view(-1, 1, 1, 1).expand(-1, 3, 8, 8)

    def log(self, name, value, **kwargs):
        self.logged[name] = value


def _batch(values, indices, captions, references):
    images = torch.tensor(values, dtype=torch.float).view(-1, 1, 1, 1).expand(-1, 3, 8, 8)
    return {"image": images, "caption": captions, "index": torch.tensor(indices), "references": references}


def test_caption_bleu_counts_each_validation_image_once(tmp_path):
    refs = {
        0: ["a red circle on the left", "a red disc at the left"],
        1: ["a big blue square at the top"],
        2: ["a green cross in the centre", "there is a green cross in the middle"],
    }
    model = _CaptioningModel({0: "a red circle at the left", 1: "a big blue square at the top", 2: "a green cross"})
    trainer = SimpleNamespace(
        sanity_checking=False, world_size=1, is_global_zero=True, global_step=10, loggers=[], logger=None,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    callback = CaptionBLEU(num_table_images=2)
    callback.on_validation_epoch_start(trainer, model)
    # The second batch repeats image 0, as a distributed sampler pads the last batch.
    for batch_idx, indices in enumerate([[0, 1], [2, 0]]):
        batch = _batch(indices, indices, [refs[i][0] for i in indices], [refs[i] for i in indices])
        callback.on_validation_batch_end(trainer, model, None, batch, batch_idx)
    callback.on_validation_epoch_end(trainer, model)

    expected = corpus_bleu([model.captions[i] for i in range(3)], [refs[i] for i in range(3)])
    for n in range(1, 5):
        assert model.logged[f"val/bleu{n}"] == pytest.approx(expected[f"bleu{n}"], abs=1e-7)
    # The stand-in generator draws exactly the caption it is given: its cycle BLEU is the references' own.
    assert model.logged["val/cycle_bleu4"] == pytest.approx(1.0)
    (table,) = (tmp_path / "captions").glob("batch_0000005.jsonl")
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    assert [r.get("index") for r in rows] == [0, 1] and rows[0]["caption"] == "a red circle at the left"


def test_caption_bleu_runs_every_n_validations(tmp_path):
    model = _CaptioningModel({0: "a red circle"})
    trainer = SimpleNamespace(
        sanity_checking=False, world_size=1, is_global_zero=True, global_step=0, loggers=[], logger=None,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    callback = CaptionBLEU(every_n_validations=2, cycle=False)
    counts = []
    for _ in range(4):
        model.logged = {}
        callback.on_validation_epoch_start(trainer, model)
        callback.on_validation_batch_end(
            trainer, model, None, _batch([0], [0], ["a red circle"], [["a red circle"]]), 0
        )
        callback.on_validation_epoch_end(trainer, model)
        counts.append(len(model.logged))
    assert counts == [4, 0, 4, 0]


def test_a_full_disk_for_sample_pngs_warns_and_training_goes_on(tmp_path, datamodule, tiny_model, monkeypatch):
    import errno

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", no_space)
    grid = SampleGrid(["a red circle at the left"], every_n_batches=2, num_images=2)
    with pytest.warns(UserWarning, match="No space left on device"):
        _trainer(tmp_path, [grid], batches=2).fit(tiny_model, datamodule)
    assert int(tiny_model.g_steps) == 2  # both batches trained
