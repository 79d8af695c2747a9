"""End to end through train.py's CLI (in this process): train a few steps, sample from the checkpoint, run again."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from m2gan.model import M2GAN
from tests.helpers import ROOT, TINY, WANDB, checkpoints, leftovers, one_line, run_cli
from train import cli


def test_fit_writes_a_checkpoint_that_samples_and_a_second_run_works(tmp_path):
    first = run_cli(["fit", *TINY], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (last,) = checkpoints(tmp_path)
    run_folder = last.parent.parent
    assert (run_folder / "config.yaml").is_file()
    assert list((run_folder / "samples").glob("batch_*.png")), "no sample grid written"

    model = M2GAN.load(last)
    images = model.ema.generate(["a red circle at the left"], num_images=4, seed=0)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    captions = model.ema.caption(images, num_beams=2)
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    assert list((run_folder / "captions").glob("batch_*.jsonl")), "no caption table written"
    assert int(model.g_steps) == 4  # 32 images / batch 8: the whole epoch is in last.ckpt

    (tmp_path / "prompts.txt").write_text("a red circle at the left\n\na big blue square\n")
    predicted = run_cli(
        ["predict", *TINY, f"--ckpt_path={last}", "--data.predict_prompts=prompts.txt", "--data.predict_num_images=2"],
        tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    (manifest,) = tmp_path.glob("runs/m2gan/*/predictions/manifest.jsonl")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(p.name for p in manifest.parent.glob("*.png")) == sorted(r["file"] for r in rows)
    assert [r["prompt"] for r in rows] == ["a red circle at the left"] * 2 + ["a big blue square"] * 2
    # The tiny checkpoint does not fit the default config's model: one clear line, no traceback.
    mismatch = run_cli(["predict", f"--ckpt_path={last}", "--data.predict_prompts=prompts.txt"], tmp_path)
    assert mismatch.returncode != 0 and re.search("another (data )?config", mismatch.stderr), mismatch.stderr[-2000:]
    assert "Traceback" not in mismatch.stderr

    tested = run_cli(["test", *TINY, f"--ckpt_path={last}"], tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "test/match_acc" in tested.stdout and "test/caption_loss" in tested.stdout

    second = run_cli(["fit", *TINY, "--trainer.max_steps=2"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(checkpoints(tmp_path)) == 2  # its own run folder: nothing of the first run overwritten


def test_wandb_failure_falls_back_to_csv(tmp_path):
    # Online mode with no API key anywhere: W&B refuses to start; training must go on.
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": str(tmp_path), "NETRC": str(tmp_path / "none")}
    result = run_cli(["fit", *TINY, *WANDB, "--trainer.max_steps=4", "--trainer.log_every_n_steps=1"], tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logging to CSV" in result.stderr
    assert list(tmp_path.glob("runs/m2gan/version_*/metrics.csv"))
    assert list(tmp_path.glob("runs/m2gan/version_*/checkpoints/last.ckpt"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "--model.objective.no_such_knob=1"], "no_such_knob"),
        (["fit", "--data.resolution=48"], "power of two"),
        (["fit", "--ckpt_path=missing.ckpt"], "missing.ckpt"),
        (["fit", "--ckpt_path=last"], "no run under"),
        (["fit", "--model.generator.lr_g=fast"], "lr_g"),
        (["fit", "--model.discriminator.lr_d=-0.001"], "model.discriminator.lr_d must be positive"),
        (
            [
                "fit",
                "--data.batch_size=9",
                "--trainer.devices=2",
                "--trainer.accelerator=cpu",
                "--trainer.strategy=ddp_find_unused_parameters_true",
            ],
            "data.batch_size=9 is not divisible by the 2",
        ),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, args, message):
    result = run_cli(args, tmp_path)
    assert result.returncode != 0
    one_line(result.stderr, re.escape(message))
    assert leftovers(tmp_path) == []


def test_no_subcommand_prints_usage(tmp_path):
    result = run_cli([], tmp_path)
    assert result.returncode == 0
    assert "python train.py fit" in result.stdout


def test_print_config_shows_the_default_job_and_its_callbacks_build(tmp_path):
    import importlib

    result = run_cli(["fit", "--print_config"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["objective"]["contrastive_weight_d"] == 1.0
    # The tiny runs of the other tests bring their own callbacks: the default job's must build as configured.
    listed = printed["trainer"]["callbacks"]
    assert "callbacks.FID" in [c["class_path"] for c in listed]
    for entry in listed:
        module, name = entry["class_path"].rsplit(".", 1)
        getattr(importlib.import_module(module), name)(**entry.get("init_args", {}))
    from train import NAMED_CALLBACKS

    for key, callback in NAMED_CALLBACKS.items():  # the callbacks every run has, each under its own key
        callback(**printed[key])
    assert len(printed["samples"]["prompts"]) == 7


@pytest.mark.parametrize("size", ["gpu-64px", "cpu-64px"])
@pytest.mark.parametrize("data", ["coco", "cub", "folder", "webdataset"])
def test_a_size_file_and_a_data_file_compose(capsys, size, data):
    sizes, data_file = ROOT / "configs" / "sizes" / f"{size}.yaml", ROOT / "configs" / "data" / f"{data}.yaml"
    with pytest.raises(SystemExit) as exit_:
        cli(["fit", f"--config={sizes}", f"--config={data_file}", "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["format"] == data and printed["data"]["resolution"] == 64  # each file's own part
    widths = {"gpu-64px": 256, "cpu-64px": 64}  # the GPU size file's own, the CPU one keeps the default job's
    assert printed["model"]["max_channels"] == widths[size] and printed["model"]["objective"]["gp_interval"] == 16
    assert printed["samples"]["prompts"] is None  # drawn from the data's own validation captions


def test_wandb_api_key_never_lands_in_a_written_file(tmp_path):
    secret = "0123456789abcdef-dummy-api-key-for-the-secret-scan"
    result = run_cli(["fit", *TINY, *WANDB, "--trainer.max_steps=4"], tmp_path, env={"WANDB_API_KEY": secret})
    assert result.returncode == 0, result.stderr[-3000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in written) and any(p.name == "config.yaml" for p in written)
    assert any(p.suffix == ".wandb" for p in written)
    leaks = [str(p) for p in written if secret.encode() in p.read_bytes()]
    assert not leaks, f"the API key was written to {leaks}"
    assert secret not in result.stdout + result.stderr


def test_print_config_with_comments_carries_each_options_help(tmp_path):
    result = run_cli(["fit", "--print_config=comments"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    at = lines.index("    noise_dim: 64")  # a model group's option, with its docstring's line just above
    assert lines[at - 1].startswith("    # Width of the generator's noise vector.")
    assert lines[lines.index("collapse:") - 1].startswith("# Every ``every_n_batches`` training batches, check")
    assert not list(tmp_path.iterdir()), "printing the config wrote files"


def test_fit_help_names_the_callbacks_and_their_keys(tmp_path):
    result = run_cli(["fit", "--help"], tmp_path)
    assert result.returncode == 0
    assert "Namespace(" not in result.stdout  # the default callbacks by class name, not as nested dumps
    assert "default: [callbacks.ImageWriter," in " ".join(result.stdout.split())
    for option in ("--collapse.stop", "--samples.every_n_batches", "--checkpoint.every_n_train_steps",
                   "--model.objective.swap_weight", "--model.generator.g_channels"):  # fmt: skip
        assert option in result.stdout, option
