"""Fault injection: every bad input is one line naming the file or option, a non-zero exit, and
nothing lost or left behind. (Checkpoint kills are in test_crash_safety.py, train.py's configuration
errors in test_train_cli.py.)"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import m2gan
from m2gan import export as export_module
from m2gan import sample
from m2gan.checkpoint_io import CheckpointError
from m2gan.data import CaptionDataModule
from m2gan.data.check import main as data_main
from m2gan.model import M2GAN
from tests.helpers import ROOT, TINY, TINY_MODEL, WANDB, leftovers, model_of, one_line, run_cli, shards


def run(argv, capsys, main=sample.main) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- files that are not checkpoints


def _bad_files(folder: Path, checkpoint: str) -> dict[str, Path]:
    data = Path(checkpoint).read_bytes()
    files = {"empty": b"", "text": b"hello, this is not a checkpoint\n", "truncated": data[: len(data) // 3]}
    for name, content in files.items():
        (folder / f"{name}.ckpt").write_bytes(content)
    return {name: folder / f"{name}.ckpt" for name in files}


@pytest.mark.parametrize(
    "kind, reason", [("empty", "the file is empty"), ("text", "not a readable checkpoint"), ("truncated", "truncated")]
)
def test_a_file_that_is_not_a_checkpoint_is_one_clear_error_everywhere(checkpoint, tmp_path, capsys, kind, reason):
    path = _bad_files(tmp_path, checkpoint)[kind]
    with pytest.raises(m2gan.CheckpointError, match=re.escape(str(path))):  # the documented class
        m2gan.load(path)
    with pytest.raises(CheckpointError, match=reason):
        M2GAN.load(path)
    status, err = run(["generate", str(path), "--prompt", "a red circle", "--out", str(tmp_path / "o")], capsys)
    assert status == 1
    one_line(err, f"{re.escape(str(path))}: .*{reason}")
    status, err = run([str(path), "--out", str(tmp_path / "e")], capsys, export_module.main)
    assert status == 1
    one_line(err, reason)
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "config, message",
    [
        ([1, 2], "not an M2GAN export \\(format 'list'\\)"),
        ({"format": "m2gan-export", "version": 2, "pipeline": "big"}, "config.json: not an M2GAN export \\(\"pipeline\" is not"),
        ({"format": "m2gan-export", "version": 2, "pipeline": {}}, "config.json: its model settings are not valid"),
        ({"format": "m2gan-export", "version": "2"}, "export version '2' is not one"),
    ],
)
def test_an_export_config_of_the_wrong_structure_is_a_checkpoint_error(checkpoint, tmp_path, config, message):
    export_module.export(m2gan.load(checkpoint), tmp_path / "export")
    (tmp_path / "export" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        m2gan.load(tmp_path / "export")


def test_an_export_without_its_tokenizer_is_a_checkpoint_error(checkpoint, tmp_path):
    export_module.export(m2gan.load(checkpoint), tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    config["tokenizer"] = '{"tokenizer": "nonsense", "max_length": 8}'
    (tmp_path / "export" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: .*not a tokenizer written by M2GAN"):
        m2gan.load(tmp_path / "export")


# ---------------------------------------------------------------- outputs never replace files


@pytest.mark.parametrize("target", ["checkpoint", "image", "other"])
def test_caption_out_never_replaces_an_existing_file(checkpoint, tmp_path, capsys, target):
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 40), "red").save(image)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(Path(checkpoint).read_bytes())
    (tmp_path / "other.jsonl").write_text("keep me\n")
    out = {"checkpoint": ckpt, "image": image, "other": tmp_path / "other.jsonl"}[target]
    before = snapshot(tmp_path)
    status, err = run(["caption", str(ckpt), str(image), "--out", str(out)], capsys)
    assert status == 1
    one_line(err, f"--out {re.escape(str(out))}: exists")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- numbers checked where they enter


@pytest.mark.parametrize(
    "args, message",
    [
        (["--truncation", "nan"], "--truncation must be a finite number, got nan"),
        (["--truncation", "inf"], "--truncation must be a finite number"),
        (["--truncation", "-1"], "--truncation must be positive"),
        (["--seed", str(2**80)], "--seed must be at least 0 and at most"),
        (["--num-images", "0"], "--num-images must be at least 1"),
        (["--prompts-file", "."], ": cannot read the prompt file \\(Is a directory\\)"),
    ],
)
def test_bad_numbers_and_options_of_generate_are_one_line(checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "o"
    status, err = run(["generate", checkpoint, "--prompt", "a red circle", *args, "--out", str(out)], capsys)
    assert status == 1
    one_line(err, message)
    assert not out.exists() and not list(tmp_path.glob(".o.partial-*"))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p.generate(["a red circle"], num_images=2.5), "num_images must be a whole number, got 2.5"),
        (lambda p: p.generate(["a red circle"], num_images=True), "num_images must be a whole number"),
        (lambda p: p.generate(["a red circle"], truncation=float("nan")), "truncation must be a finite number"),
        (lambda p: p.generate(["a red circle"], seed=-1), "seed must be at least 0"),
        (lambda p: p.generate(["a red circle"], batch_size=0), "batch_size must be at least 1"),
        (lambda p: p.generate([123]), "prompt 0 is not a string but int"),
        (lambda p: p.caption(torch.zeros(1, 3, 32, 32), num_beams=0), "num_beams must be at least 1"),
        (lambda p: p.caption(torch.zeros(1, 3, 32, 32), temperature=-1.0), "temperature must be 0"),
        (lambda p: p.caption(torch.full((1, 3, 32, 32), float("nan"))), "images hold NaN or infinite values"),
    ],
)
def test_the_python_api_checks_its_numbers(checkpoint, call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call(m2gan.load(checkpoint))


# ---------------------------------------------------------------- big jobs stream, and clean up


def test_generate_streams_batches_to_disk_in_order_and_names_sort(checkpoint, tmp_path, capsys, monkeypatch):
    from m2gan import outputs

    written = []
    original = outputs.write_images
    monkeypatch.setattr(outputs, "write_images", lambda folder, images, row, *a: written.append(images.shape[0]) or original(folder, images, row, *a))  # fmt: skip
    out = tmp_path / "o"
    argv = ["generate", checkpoint, "--prompt", "a red circle", "--num-images", "101", "--batch-size", "40"]
    status, err = run([*argv, "--out", str(out)], capsys)
    assert status == 0, err
    assert written == [40, 40, 21]  # one batch in memory at a time
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [row["file"] for row in rows] and [row["noise_index"] for row in rows] == list(range(101))
    assert names[:2] == ["0000_000.png", "0000_001.png"] and names[-1] == "0000_100.png"
    # streaming draws exactly the images of one call
    whole = m2gan.load(checkpoint).generate(["a red circle"], 101)
    assert torch.equal(
        torch.from_numpy(__import__("numpy").asarray(Image.open(out / "0000_100.png"))).permute(2, 0, 1), whole[100]
    )


def test_a_full_disk_is_one_line_and_leaves_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    status, err = run(["generate", checkpoint, "--prompt", "a red circle", "--out", str(tmp_path / "o")], capsys)
    assert status == 1
    one_line(err, "o: cannot write the images \\(No space left on device\\)")
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_a_big_job_leaves_no_partial_folder(checkpoint, tmp_path):
    out = tmp_path / "o"
    command = [sys.executable, "-m", "m2gan.sample", "generate", checkpoint, "--prompt", "a red circle",
               "--num-images", "1000000", "--batch-size", "64", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".o.partial-*/*.png")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(tmp_path.glob(".o.partial-*/*.png")), "the job never started writing"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- data files


@pytest.mark.parametrize("content", ["[1, 2, 3]", '{"images": [{"file_name": "a.png"}]}', '{"images": "x"}'])
def test_a_coco_file_that_is_not_a_coco_dict_is_one_line(tmp_path, capsys, content):
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"captions_{split}2017.json").write_text(content)
    status, err = run(["check", str(tmp_path), "--format", "coco"], capsys, data_main)
    assert status == 1
    one_line(err, "captions_train2017.json: not a COCO captions file: expected an object")
    with pytest.raises(ValueError, match="not a COCO captions file"):
        CaptionDataModule(format="coco", root=str(tmp_path))


def test_coco_captions_under_another_key_are_named_not_counted_as_empty(tmp_path, capsys):
    (tmp_path / "annotations").mkdir()
    content = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 7, "image_id": 1, "text": "a cat"}]}
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(content))
    status, err = run(["check", str(tmp_path), "--format", "coco"], capsys, data_main)
    assert status == 1
    one_line(err, r'captions_train2017.json: no annotation has a "caption" key \(its annotations have id, image_id, '
                  "text\\): not a COCO captions file")  # fmt: skip


def test_an_image_with_two_empty_captions_is_one_example(tmp_path):
    from m2gan.data.captioned import Problems, clean_captions

    problems = Problems()
    clean_captions(["", " ", "a cat"], "a.jpg", problems)
    clean_captions([""], "b.jpg", problems)
    assert problems.counts["empty captions"] == 3 and problems.examples["empty captions"] == ["a.jpg", "b.jpg"]


def test_a_bad_resolution_for_the_data_check_is_one_line(tmp_path, capsys):
    status, err = run(["check", str(tmp_path), "--format", "folder", "--resolution", "-5"], capsys, data_main)
    assert status == 1
    one_line(err, "data.resolution must be at least 8 pixels, got -5")


# ---------------------------------------------------------------- train.py: refused before any work, nothing left


def test_train_refuses_bad_checkpoints_and_leaves_no_run_behind(checkpoint, tmp_path):
    files = _bad_files(tmp_path, checkpoint)
    for kind, reason in (("empty", "the file is empty"), ("text", "not a readable checkpoint")):
        result = run_cli(["fit", *TINY, f"--ckpt_path={files[kind]}"], tmp_path)
        assert result.returncode == 1
        assert f"error: --ckpt_path {files[kind]}: " in result.stderr and reason in result.stderr
        assert "Traceback" not in result.stderr
    # a checkpoint of other data (LightningCLI takes the model settings from the checkpoint itself),
    # refused after W&B started: the run it began is removed too
    result = run_cli(["fit", *TINY, *WANDB, f"--ckpt_path={checkpoint}"], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "model.ckpt: the checkpoint's tokenizer differs from the data module's" in result.stderr
    assert leftovers(tmp_path) == []


def test_a_dataset_smaller_than_one_batch_fails_and_leaves_no_run_behind(tmp_path):
    result = run_cli(["fit", *TINY, "--data.train_size=4"], tmp_path)
    assert result.returncode == 1
    assert "error: data: the training split holds 4 images, fewer than one batch of data.batch_size 8" in result.stderr
    assert "Traceback" not in result.stderr
    assert leftovers(tmp_path) == []


def test_a_validation_interval_longer_than_the_epoch_validates_at_its_end(tmp_path):
    args = [a for a in TINY if not a.startswith("--trainer.val_check_interval")]
    result = run_cli(["fit", *args, "--trainer.val_check_interval=1000"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val_check_interval 1000 is longer than an epoch (4 batches)" in result.stderr
    assert len(list(tmp_path.glob("runs/m2gan/*/checkpoints/last.ckpt"))) == 1  # Lightning would have refused


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trainer.max_time=ten minutes"], "trainer.max_time 'ten minutes' is not DD:HH:MM:SS"),
        (["--trainer.precision=16-mixed"], "trainer.precision 16-mixed is not supported .* use bf16-mixed"),
    ],
)
def test_train_options_refused_before_setup(tmp_path, args, message):
    result = run_cli(["fit", *TINY, *args], tmp_path)
    assert result.returncode == 2
    one_line(result.stderr, message)
    assert leftovers(tmp_path) == []


def test_a_checkpoint_of_other_model_sizes_names_the_weights_that_do_not_fit(checkpoint):
    saved = M2GAN.load(checkpoint)
    other = model_of(**{**saved.hparams, **TINY_MODEL, "g_channels": 4})
    with pytest.raises(CheckpointError, match=r"does not fit this model \(.*shapes differ for weights of ema, generator"):
        other.check_checkpoint(checkpoint, saved.tokenizer)
    saved.check_checkpoint(checkpoint, saved.tokenizer)  # its own checkpoint fits


def test_a_fit_that_trains_no_batch_exits_non_zero(tmp_path):
    pattern = shards(tmp_path / "shards", count=2, per_shard=1)  # 2 samples: no batch of 8 (streamed: no length)
    data = ["--data.format=webdataset", f"--data.train_shards={pattern}", f"--data.val_shards={pattern}"]
    result = run_cli(["fit", *TINY, *data, "--data.tokenizer_fit_size=2"], tmp_path)
    assert result.returncode == 1
    assert "error: training ran no batch: the data held nothing to train on" in result.stderr
    assert "Traceback" not in result.stderr
