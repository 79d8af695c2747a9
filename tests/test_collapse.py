"""No silent collapse: the alarm names a generator that draws flat or identical images, in a line and in W&B,
and can stop the run with its pre-collapse checkpoints kept; the linear output keeps a gradient where tanh has none."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from callbacks import CollapseAlarm, FinalCheckpoint
from callbacks.collapse import image_statistics, prompt_dependence
from m2gan.checkpoint_io import CheckpointError
from m2gan.data.shapes import ShapesDataset
from m2gan.images import to_uint8
from m2gan.model import M2GAN, CollapseError
from m2gan.networks import Generator
from tests.helpers import TINY_MODEL, model_of


class _Collapsing:
    """Stands in for the EMA pipeline's ``generate``: each prompt's own real validation image, a
    little jittered per drawing, until ``collapse_at`` batches are trained; then black images only
    (what the collapsed dark-data runs drew), or with ``ignoring`` the same drawings whatever the
    prompt (pictures, not of what was asked)."""

    def __init__(self, model: M2GAN, images: torch.Tensor, collapse_at: int | None, ignoring: bool = False):
        self.model, self.images, self.collapse_at, self.ignoring = model, images, collapse_at, ignoring

    def __call__(self, prompts, num_images=1, seed=0, batch_size=None):
        count = len(prompts) * num_images
        jitter = 0.05 * torch.randn(count, *self.images.shape[1:], generator=torch.Generator().manual_seed(seed))
        if self.collapse_at is not None and self.model.batches_trained >= self.collapse_at:
            if not self.ignoring:
                return torch.zeros(count, *self.images.shape[1:], dtype=torch.uint8)
            return to_uint8(self.images[torch.arange(count) % num_images] + jitter[:num_images].repeat(len(prompts), 1, 1, 1))
        return to_uint8(self.images[torch.arange(count) // num_images % len(self.images)] + jitter)


def _fit(tmp_path, datamodule, tiny_model, alarm, collapse_at, logger=False, batches=6, ignoring=False):
    datamodule.setup("fit")
    val = datamodule.datasets["val"]
    images = torch.stack([val[i]["image"] for i in range(8)])
    tiny_model.ema.generate = _Collapsing(tiny_model, images, collapse_at, ignoring)
    # A checkpoint every 2 batches (4 optimizer steps), at the alarm's checks.
    checkpoints = FinalCheckpoint(tmp_path / "ckpt", filename="{step}", save_last=True, save_top_k=-1,
                                  every_n_train_steps=4)  # fmt: skip
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=logger,
        callbacks=[checkpoints, alarm], enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(tiny_model, datamodule)
    return trainer


def test_image_statistics_see_black_and_identical_images_as_nothing():
    real = torch.stack([ShapesDataset("val", 8, 32, background="black").image(i) for i in range(8)])
    figures = image_statistics(real)
    assert figures["detail"] > 0.05 and figures["spread"] > 0.05
    black = image_statistics(torch.zeros(8, 3, 32, 32, dtype=torch.uint8))
    assert black == {"detail": 0.0, "spread": 0.0, "mean": 0.0}
    alike = image_statistics(real[:1].repeat(8, 1, 1, 1))
    assert alike["spread"] == 0.0 and alike["detail"] == pytest.approx(image_statistics(real[:1])["detail"])


def test_a_healthy_run_raises_no_alarm(tmp_path, datamodule, tiny_model, capsys):
    alarm = CollapseAlarm(every_n_batches=2, num_prompts=4, num_images=2)
    _fit(tmp_path, datamodule, tiny_model, alarm, collapse_at=None)
    assert alarm.collapsed_since is None
    assert "collapse" not in capsys.readouterr().err


def test_prompt_dependence_is_about_one_for_images_that_ignore_their_prompts():
    generator = torch.Generator().manual_seed(0)
    unrelated = torch.rand(8 * 4, 3, 32, 32, generator=generator)  # 8 prompts x 4 draws of one distribution
    assert prompt_dependence(unrelated, 8) == pytest.approx(1.0, abs=0.1)
    assert prompt_dependence(unrelated[:4].repeat(8, 1, 1, 1), 8) == 0.0  # the same 4 images for every prompt
    per_prompt = torch.rand(8, 1, 3, 32, 32, generator=generator)  # each prompt its own picture, a little noise
    following = (per_prompt + 0.1 * torch.rand(8, 4, 3, 32, 32, generator=generator)).flatten(0, 1)
    assert prompt_dependence(following, 8) > 50
    assert prompt_dependence(per_prompt.repeat(1, 4, 1, 1, 1).flatten(0, 1), 8) == float("inf")


def test_images_that_ignore_their_prompts_raise_the_alarm(tmp_path, datamodule, tiny_model, capsys):
    """Not flat, not all alike, only the same pictures whatever was asked (the critic at lr 2e-3)."""
    alarm = CollapseAlarm(every_n_batches=2, num_prompts=4, num_images=2, stop=True)
    with pytest.raises(CollapseError, match="collapse alarm at batch 4: .* are ignoring their prompts"):
        _fit(tmp_path, datamodule, tiny_model, alarm, collapse_at=3, ignoring=True)
    line = next(line for line in capsys.readouterr().err.splitlines() if "collapse alarm" in line)
    assert "flat" not in line and "all alike" not in line and "prompt dependence 0.0" in line


def test_the_alarm_names_the_symptom_and_batch_in_one_line_and_in_the_wandb_summary(
    tmp_path, datamodule, tiny_model, capsys
):
    import wandb

    from m2gan.loggers import AutoWandbLogger
    from tests.helpers import history, inspect_run

    logger = AutoWandbLogger(save_dir=str(tmp_path / "runs"))
    alarm = CollapseAlarm(every_n_batches=2, num_prompts=4, num_images=2)
    trainer = _fit(tmp_path, datamodule, tiny_model, alarm, collapse_at=3, logger=logger)
    run_folder = Path(logger.experiment.dir).parent
    wandb.finish()
    wandb.teardown()
    assert trainer.global_step == 12  # not asked to stop: the run goes on
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("m2gan:") and "collapse" in line]
    assert lines[0].startswith("m2gan: collapse alarm at batch 4: the EMA generator's images are flat")
    assert "black" in lines[0] and "all alike" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("m2gan: training ended collapsed: collapse alarm at batch 4")
    summary = inspect_run(run_folder, "--summary")["summary"]
    assert summary["collapse/detected"] is True and summary["collapse/batch"] == 4
    assert "flat" in summary["collapse/symptom"]
    alarms = {row["trainer/batch"]: row["collapse/alarm"] for row in history(run_folder) if "collapse/alarm" in row}
    assert alarms == {2: 0.0, 4: 1.0, 6: 1.0}


def test_with_stop_the_run_ends_at_the_alarm_and_keeps_the_checkpoints_from_before(tmp_path, datamodule, tiny_model):
    alarm = CollapseAlarm(every_n_batches=2, num_prompts=4, num_images=2, stop=True)
    with pytest.raises(CollapseError, match="collapse alarm at batch 4: .*flat.*stopped"):
        _fit(tmp_path, datamodule, tiny_model, alarm, collapse_at=3)
    written = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert written == ["last.ckpt", "step=4.ckpt"]  # batch 2's; the collapsed batch 4 was never saved
    assert int(M2GAN.load(tmp_path / "ckpt" / "last.ckpt").d_steps) == 2


def test_a_linear_output_passes_gradient_where_tanh_saturates():
    grads = {}
    for output in ("linear", "tanh"):
        torch.manual_seed(0)
        generator = Generator(32, noise_dim=8, sentence_dim=8, base_channels=8, max_channels=16, output=output)
        with torch.no_grad():
            generator.to_rgb.bias.fill_(-4.0)  # pushed to black, as on dark data
        images = generator(torch.randn(4, 8), torch.randn(4, 8))
        images.sum().backward()
        grads[output] = generator.to_rgb.bias.grad.abs().mean().item()
        if output == "tanh":
            assert images.max() < -0.99
    assert grads["tanh"] < 0.01 * grads["linear"]


def test_an_old_tanh_checkpoint_does_not_silently_resume_as_linear(checkpoint, tmp_path):
    saved = torch.load(checkpoint, weights_only=True)
    del saved["hyper_parameters"]["generator"]["generator_output"]  # written before it existed: trained with tanh
    torch.save(saved, tmp_path / "old.ckpt")
    assert M2GAN.load(tmp_path / "old.ckpt").settings.generator.generator_output == "tanh"
    model = M2GAN.load(checkpoint)
    assert model.settings.generator.generator_output == "linear"
    pattern = "ends in tanh, this model's in linear: .*--model.generator.generator_output tanh"
    with pytest.raises(CheckpointError, match=pattern):
        model.check_checkpoint(tmp_path / "old.ckpt")


def test_the_black_background_draws_the_same_objects_and_captions_on_black():
    gradient, black = ShapesDataset("train", 16, 32), ShapesDataset("train", 16, 32, background="black")
    assert gradient.fingerprint != black.fingerprint
    for i in range(16):
        assert black.caption(i) == gradient.caption(i) and black.scene(i).objects == gradient.scene(i).objects
        assert (black.image(i) == -1).all(0).float().mean() > 0.6  # black wherever no object is
        assert not (gradient.image(i) == -1).all(0).any()
    with pytest.raises(ValueError, match="background must be"):
        ShapesDataset("train", 4, 32, background="white")


def test_the_default_tiny_model_is_linear_and_tanh_is_kept_for_whoever_asks(datamodule):
    sizes = {"vocab_size": datamodule.vocab_size, "max_length": datamodule.max_length, **TINY_MODEL}
    model = model_of(**sizes)
    assert model.generator.output == model.ema.generator.output == "linear"
    tanh = model_of(generator_output="tanh", **sizes)
    assert tanh.generator.output == tanh.ema.generator.output == "tanh"
