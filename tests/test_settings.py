"""Settings declared once: nested groups on the command line, earlier versions' checkpoints, exports and
config files, warnings for settings that do nothing, callbacks tuned by name, refusals in one line."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from types import SimpleNamespace

import pytest
import torch

import m2gan
from m2gan.cli import RunProgressBar
from m2gan.data.datamodule import CaptionDataModule, ignored_data_settings
from m2gan.export import export
from m2gan.model import M2GAN
from m2gan.settings import EARLIER_DEFAULTS, GROUP_OF, GROUPS, ModelSettings, SettingsError, nest, overridden
from tests.helpers import TINY, leftovers, one_line, run_cli


def _flat(nested: dict) -> dict:
    """Settings as the previous version saved them: one flat table."""
    return {k: v for key, value in nested.items() for k, v in (value.items() if isinstance(value, dict) else [(key, value)])}


def test_every_field_has_one_group_and_earlier_flat_settings_nest():
    # No two groups share a field name, so an earlier version's flat name says where it lives now.
    assert len(GROUP_OF) == sum(len(dataclasses.fields(group)) for group in GROUPS.values())
    assert nest({"swap_weight": 0.2, "lr_g": 1.0, "resolution": 64}) == {
        "objective": {"swap_weight": 0.2}, "generator": {"lr_g": 1.0}, "resolution": 64,
    }  # fmt: skip
    with pytest.raises(SettingsError, match="unknown model setting 'warp_drive'"):
        nest({"warp_drive": 9})
    # A table given for a group becomes that group; a field it does not know is named.
    assert ModelSettings(objective={"swap_weight": 0.0}).objective.swap_weight == 0.0
    with pytest.raises(SettingsError, match="model.objective.lr_g"):
        ModelSettings(objective={"lr_g": 1.0})


def test_a_checkpoint_and_an_export_of_the_previous_version_load_and_draw_the_same(checkpoint, tmp_path):
    saved = torch.load(checkpoint, weights_only=True)
    assert set(saved["hyper_parameters"]) >= {"text", "generator", "objective"}  # nested tables, plain containers
    old = {**saved, "hyper_parameters": _flat(saved["hyper_parameters"])}
    torch.save(old, tmp_path / "flat.ckpt")
    prompts = ["a red circle", "a big blue square at the top"]
    expected = m2gan.load(checkpoint).generate(prompts, seed=3)
    assert torch.equal(m2gan.load(tmp_path / "flat.ckpt").generate(prompts, seed=3), expected)
    assert M2GAN.load(tmp_path / "flat.ckpt").settings == M2GAN.load(checkpoint).settings
    # A flat checkpoint that lacks a setting whose default changed takes the value it was trained with.
    del old["hyper_parameters"]["text_position_std"]
    torch.save(old, tmp_path / "older.ckpt")
    assert M2GAN.load(tmp_path / "older.ckpt").settings.text.text_position_std == EARLIER_DEFAULTS["text_position_std"]

    # An export of the previous format (version 2: flat pipeline sizes) loads too.
    folder = export(m2gan.load(checkpoint), tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    assert config["version"] == 3 and "generator" in config["pipeline"]
    config["version"], config["pipeline"] = 2, _flat(config["pipeline"])
    (folder / "config.json").write_text(json.dumps(config))
    assert torch.equal(m2gan.load(folder).generate(prompts, seed=3), expected)


def test_an_old_config_file_with_flat_keys_is_refused_in_one_line(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("model:\n  noise_dim: 8\n  swap_weight: 0.2\n")
    result = run_cli(["fit", *TINY, f"--config={config}"], tmp_path)
    assert result.returncode == 2
    one_line(result.stderr, re.escape(f"{config}: model.noise_dim is now model.generator.noise_dim"))
    assert leftovers(tmp_path) == []


def test_flat_command_line_keys_of_the_previous_version_still_work_with_a_note(tmp_path):
    result = run_cli(["fit", *TINY, "--model.swap_weight=0.25", "--print_config"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "note: --model.swap_weight is now --model.objective.swap_weight" in result.stderr
    assert "    swap_weight: 0.25" in result.stdout.splitlines()


IGNORED_MODEL = [
    ({"text_position_std": 0.5}, "model.text.text_position_std"),  # under the GRU
    ({"text_architecture": "transformer", "text_position_std": 0.5}, None),  # read there
    ({"lr_text_encoder": 1e-4}, "model.text.lr_text_encoder"),
    ({"caption_temperature": 0.5}, "model.objective.caption_temperature"),
    ({"caption_temperature": 0.5, "caption_adversarial_weight": 0.1}, None),
    ({"caption_label_smoothing": 0.1, "caption_weight": 0.0, "cycle_weight": 0.0}, "model.objective.caption_label_smoothing"),
    ({"gp_weight": 1.0, "gradient_penalty": "none"}, "model.objective.gp_weight"),
    ({"gp_interval": 8, "gradient_penalty": "none"}, "model.objective.gp_interval"),
    ({"twin_margin": 2.0}, "model.objective.twin_margin"),
    ({"twin_margin": 2.0, "caption_twin_weight": 0.1}, None),
    ({"contrastive_temperature": 0.2, "contrastive_weight_d": 0.0, "contrastive_weight_g": 0.0},
     "model.objective.contrastive_temperature"),
    ({"swap_from_corpus": True, "swap_weight": 0.0}, "model.objective.swap_from_corpus"),
    ({"swap_from_corpus": True}, None),
    ({"swap_candidates": 8, "swap_weight": 0.0}, "model.objective.swap_candidates"),
    ({"swap_candidates": 8}, None),
    ({"swap_captioner_margin": 1.0}, "model.objective.swap_captioner_margin"),  # nothing is mined
    ({"swap_captioner_margin": 1.0, "swap_candidates": 8}, None),
    ({"word_region_teacher_half_life": 1000.0}, "model.objective.word_region_teacher_half_life"),
    ({"word_region_teacher_half_life": 1000.0, "word_region_weight": 1.0, "word_region_weight_g": 0.0},
     "model.objective.word_region_teacher_half_life"),  # the generator has no term to teach
    ({"word_region_teacher_half_life": 1000.0, "word_region_weight": 1.0}, None),
]  # fmt: skip


@pytest.mark.parametrize("settings, warned", IGNORED_MODEL)
def test_a_model_setting_without_effect_is_named(settings, warned):
    lines = ModelSettings(**overridden({}, **settings)).ignored()
    assert lines == ([] if warned is None else [lines[0]])
    if warned:
        assert lines[0].startswith(f"{warned} has no effect: ")
    assert ModelSettings().ignored() == []  # the defaults never warn


def test_settings_under_a_pretrained_encoder_are_named():
    settings = ModelSettings(text={"text_encoder": "/x", "text_layers": 2, "text_architecture": "transformer"})
    assert [line.split()[0] for line in settings.ignored()] == [
        "model.text.text_layers", "model.text.text_architecture",
    ]  # fmt: skip


IGNORED_DATA = [
    ({"format": "coco", "train_size": 1000}, ["train_size"]),
    ({"format": "folder", "two_object_prob": 0.5, "held_out": ["red circle"], "background": "black"},
     ["two_object_prob", "held_out", "background"]),
    ({"augment": False}, ["augment"]),  # shapes
    ({"flip": True}, ["flip"]),  # shapes
    ({"format": "coco", "augment": False, "flip": True}, ["flip"]),
    ({"format": "coco", "flip": True}, []),
    ({"root": "/data"}, ["root"]),
    ({"format": "coco", "crop_to_box": False, "val_fraction": 0.1}, ["crop_to_box", "val_fraction"]),
    ({"format": "webdataset", "root": "/data"}, ["root"]),
    ({}, []),
]  # fmt: skip


@pytest.mark.parametrize("settings, warned", IGNORED_DATA)
def test_a_data_setting_its_format_does_not_read_is_named(settings, warned):
    defaults = {n: p.default for n, p in inspect.signature(CaptionDataModule.__init__).parameters.items()}
    lines = ignored_data_settings({**defaults, **settings})
    assert [line.split()[0] for line in lines] == [f"data.{name}" for name in warned]


def test_ignored_settings_warn_once_and_callbacks_are_tuned_by_name(tmp_path, monkeypatch):
    import train

    args = ["fit", *TINY, "--trainer.max_steps=2", "--model.text.text_position_std=0.5", "--data.flip=true",
            "--collapse.stop=true", "--collapse.every_n_batches=7"]  # fmt: skip
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for setting in ("model.text.text_position_std", "data.flip"):
        assert result.stderr.count(f"warning: {setting} has no effect") == 1, result.stderr
    # The same arguments in Python: the alarm every run has carries the values given by its name.
    monkeypatch.chdir(tmp_path)  # its run folder goes where run_cli's went
    cli = train.cli(args)
    (alarm,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "CollapseAlarm"]
    assert alarm.stop is True and alarm.every_n_batches == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--collapse.stop=maybe"], r'Parser key "collapse.stop": Expected a <class .bool.>. Got value: maybe'),
        (["--collapse.threshold=2"], "CollapseAlarm: threshold must lie between 0 and 1, got 2"),
        (["--trainer.callbacks+=callbacks.CaptionBLEU", "--trainer.callbacks.num_table_images=x"],
         r'Parser key "num_table_images": Expected a <class .int.>. Got value: x'),
        (["--trainer.callbacks+=callbacks.CollapseAlarm"],
         "trainer.callbacks lists callbacks.CollapseAlarm, which every run has already: configure it under collapse:"),
        (["--model.objective.swap_weight=-"], r'Parser key "model.objective.swap_weight": Expected a <class .float.>'),
    ],
)  # fmt: skip
def test_a_bad_callback_or_model_value_is_one_line_and_leaves_nothing(tmp_path, args, message):
    result = run_cli(["fit", *TINY, *args], tmp_path)
    assert result.returncode == 2
    one_line(result.stderr, message)
    assert leftovers(tmp_path) == []


def test_a_run_stopped_by_the_collapse_alarm_keeps_its_folder(tmp_path):
    # A threshold of 0.99 calls any tiny model at batch 2 collapsed: the stop is what is tested.
    args = ["--collapse.stop=true", "--collapse.every_n_batches=2", "--collapse.threshold=0.99"]
    result = run_cli(["fit", *TINY, "--trainer.max_steps=8", "--trainer.limit_val_batches=0", *args], tmp_path)
    assert result.returncode == 1
    assert re.search(r"^error: collapse alarm at batch 2: .*stopped", result.stderr, re.M), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (folder,) = tmp_path.glob("runs/m2gan/*")
    assert (folder / "config.yaml").is_file() and not list(folder.glob("checkpoints/*.ckpt"))  # nothing saved yet


def test_the_progress_bar_of_an_uncapped_run_reads_its_epoch_alone():
    bar = RunProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)
    assert bar._get_train_description(4).strip() == "Epoch 4"
    bar._trainer = SimpleNamespace(max_epochs=3)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"


def test_the_console_entry_runs_train_py():
    from importlib.metadata import entry_points

    import train

    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "m2gan-train"]
    assert entry.load() is train.run
    assert train.DEFAULT_CONFIG.is_file()
