"""Divergence guard: a non-finite loss or gradient never reaches the weights; too many in a row stop the run."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from m2gan.model import DivergenceError


def _fit(model, datamodule, tmp_path, batches: int) -> None:
    pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    ).fit(model, datamodule)  # fmt: skip


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def test_nan_gradient_skips_the_step_and_counts_it(tmp_path, datamodule, tiny_model):
    before_d, before_g = _snapshot(tiny_model.discriminator), _snapshot(tiny_model.generator)
    hook = next(tiny_model.discriminator.parameters()).register_hook(lambda grad: grad * float("nan"))
    _fit(tiny_model, datamodule, tmp_path, batches=3)
    hook.remove()
    for name, value in tiny_model.discriminator.state_dict().items():
        assert torch.equal(value, before_d[name]), f"{name} changed by a skipped step"
    assert any(not torch.equal(v, before_g[n]) for n, v in tiny_model.generator.state_dict().items())
    assert int(tiny_model.skipped_steps) == 3 and tiny_model.bad_run.tolist() == [3, 0]
    # Adam's state was never touched either: no moments for the discriminator's parameters.
    opt_d = tiny_model.trainer.optimizers[1]  # configure_optimizers returns (generator's, discriminator's)
    assert all(len(opt_d.state[p]) == 0 for p in tiny_model.discriminator.parameters())


def test_nan_loss_stops_training_after_max_bad_steps(tmp_path, datamodule, tiny_model, monkeypatch):
    import m2gan.losses

    tiny_model.settings = tiny_model.settings.replace(training={"max_bad_steps": 2})
    d_adversarial = m2gan.losses.d_adversarial
    monkeypatch.setattr(m2gan.losses, "d_adversarial", lambda *a, **k: d_adversarial(*a, **k) * float("nan"))
    before = _snapshot(tiny_model.discriminator)
    with pytest.raises(DivergenceError, match=r"2 consecutive discriminator steps .* \(loss nan\)"):
        _fit(tiny_model, datamodule, tmp_path, batches=5)
    assert all(torch.equal(v, before[n]) for n, v in tiny_model.discriminator.state_dict().items())
