"""A plain PyTorch training loop over M2GAN's networks, objective and optimisers (no Lightning).

The baseline of the framework-overhead and hardware-efficiency benchmarks. Its losses are the
model's own (``model.objective``) and so is the EMA update; only the loop is written here. After
the same batches from the same seed its weights equal the LightningModule's bit for bit
(``benchmarks/overhead.py`` checks this). What it leaves out is what the framework adds:
Lightning's loop, logging, the divergence guard's finiteness checks, gradient clipping.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from m2gan.data import CaptionDataModule
from m2gan.model import M2GAN
from m2gan.settings import overridden

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"


def default_parts(
    config: Path = DEFAULT_CONFIG, model: dict | None = None, data: dict | None = None
) -> tuple[CaptionDataModule, Callable[..., M2GAN]]:
    """The data module of ``config`` and a factory ``(seed, **model_overrides) -> M2GAN`` of its model.

    Built as ``train.py`` builds them (data facts linked into the model), without the CLI.
    """
    sections = yaml.safe_load(config.read_text())
    data_args = {**sections.get("data", {}), **(data or {})}
    model_args = overridden(sections.get("model", {}), **(model or {}))
    datamodule = CaptionDataModule(**data_args)

    def make_model(seed: int, **overrides) -> M2GAN:
        torch.manual_seed(seed)
        built = M2GAN(
            **overridden(model_args, **overrides, resolution=datamodule.hparams.resolution,
                         vocab_size=datamodule.vocab_size, max_length=datamodule.max_length)  # fmt: skip
        )
        built.set_tokenizer(datamodule.tokenizer)
        return built

    return datamodule, make_model


def take_batches(datamodule: CaptionDataModule, count: int) -> list[dict]:
    """The first ``count`` training batches, loaded once so every timed path reads the same ones."""
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append({"image": batch["image"], "tokens": batch["tokens"]})
        if len(batches) == count:
            return batches
    raise ValueError(f"the training split holds fewer than {count} batches")


def lazy_cycle_mean(model: M2GAN, penalty: float, plain: float) -> float:
    """Mean per batch over a lazy-penalty cycle of ``model``: one penalty batch, ``gp_interval - 1`` plain.

    ``penalty`` and ``plain`` are one batch's cost (seconds, FLOPs) with and without the penalty.
    """
    interval = model.settings.objective.gp_interval
    return (penalty + (interval - 1) * plain) / interval


def flops_per_batch(model: M2GAN, batch: dict) -> float:
    """Mean FLOPs of one training batch of ``model`` over a lazy-penalty cycle (shapes fix the FLOPs)."""
    step, counts = PlainStep(model), []
    for penalty in (True, False):
        with FlopCounterMode(display=False) as counter:
            step(batch, penalty)
        counts.append(counter.get_total_flops())
    return lazy_cycle_mean(model, *counts)


@contextlib.contextmanager
def trains_only(trained: list[torch.nn.Module], frozen: list[torch.nn.Module]) -> Iterator[None]:
    """Within the block only ``trained`` record weight gradients (as Lightning's ``toggled_optimizer``)."""
    for module in frozen:
        module.requires_grad_(False)
    try:
        yield
    finally:
        for module in frozen:
            module.requires_grad_(True)


class PlainStep:
    """One batch of M2GAN training written as a plain loop: a D step, a G step, an EMA update.

    Args:
        model: An ``M2GAN`` whose networks to train with its objective; its optimisers are built
            by its own ``configure_optimizers``.
        phase_times: If given, wall seconds of each phase are appended under ``"d_step"``,
            ``"g_step"`` and ``"ema"``.
    """

    def __init__(self, model: M2GAN, phase_times: dict[str, list[float]] | None = None) -> None:
        training = model.settings.training
        unsupported = {"grad_clip": training.grad_clip is not None, "n_critic": training.n_critic != 1}
        if any(unsupported.values()):
            names = [name for name, used in unsupported.items() if used]
            raise NotImplementedError(f"the plain loop does not implement {names}; benchmark another config")
        self.model = model
        self.opt_g, self.opt_d = model.configure_optimizers()
        self.phase_times = phase_times

    def __call__(self, batch: dict, penalty: bool | None = None) -> None:
        """Train on ``batch``.

        Args:
            batch: ``image`` and ``tokens`` of one training batch.
            penalty: Whether the discriminator step applies the gradient penalty (when the config
                has one): None follows the model's lazy schedule, as training does; True or False
                lets a benchmark time either kind of batch without running a whole cycle.
        """
        m, images = self.model, batch["image"]
        marks = [time.perf_counter()]
        with trains_only([m.discriminator, m.text_encoder], [m.generator, m.captioner]):
            d_loss = m.objective.discriminator_loss(
                images, batch["tokens"], m.penalty_due() if penalty is None else penalty
            )
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.loss.backward()
            self.opt_d.step()
        m.d_steps += 1  # the model's own counters, so both paths end in the same state
        marks.append(time.perf_counter())
        with trains_only([m.generator, m.captioner], [m.discriminator, m.text_encoder]):
            g_loss = m.objective.generator_loss(images, d_loss.text)
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.loss.backward()
            self.opt_g.step()
        m.g_steps += 1
        marks.append(time.perf_counter())
        m.update_ema(images.shape[0])
        marks.append(time.perf_counter())
        if self.phase_times is not None:
            for name, start, end in zip(("d_step", "g_step", "ema"), marks, marks[1:]):
                self.phase_times.setdefault(name, []).append(end - start)
