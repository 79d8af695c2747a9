"""A plain PyTorch training step over M2GAN's networks, losses and optimisers (no Lightning).

The baseline of the framework-overhead and hardware-efficiency benchmarks. It does the work of
``M2GAN.training_step`` for the configurations those benchmarks run, in the same order and with the
same random draws, so after the same batches from the same seed its weights equal the
LightningModule's bit for bit (``benchmarks/overhead.py`` checks this). What it leaves out is what
the framework adds: Lightning's loop, logging, the divergence guard's finiteness checks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from m2gan import losses
from m2gan.data import CaptionDataModule
from m2gan.ema import ema_beta, update_ema
from m2gan.model import M2GAN
from m2gan.negatives import swap_one_word
from m2gan.tokenizer import PAD_ID, SPECIAL_TOKENS

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
    model_args = {**sections.get("model", {}), **(model or {})}
    datamodule = CaptionDataModule(**data_args)

    def make_model(seed: int, **overrides) -> M2GAN:
        torch.manual_seed(seed)
        built = M2GAN(
            **{**model_args, **overrides},
            resolution=datamodule.hparams.resolution,
            vocab_size=datamodule.vocab_size,
            max_length=datamodule.max_length,
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
    interval = model.hparams.gp_interval
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
        model: An ``M2GAN`` whose networks (and hyperparameters) to train; its optimisers are built
            by its own ``configure_optimizers``.
        phase_times: If given, wall seconds of each phase are appended under ``"d_step"``,
            ``"g_step"`` and ``"ema"``.
    """

    def __init__(self, model: M2GAN, phase_times: dict[str, list[float]] | None = None) -> None:
        hp = model.hparams
        unsupported = {
            "caption_adversarial_weight": hp.caption_adversarial_weight > 0,
            "grad_clip": hp.grad_clip is not None,
            "n_critic": hp.n_critic != 1,
        }
        if any(unsupported.values()):
            names = [name for name, used in unsupported.items() if used]
            raise NotImplementedError(f"the plain loop does not implement {names}; benchmark another config")
        self.model, self.hp = model, hp
        self.opt_g, self.opt_d = model.configure_optimizers()
        self.phase_times = phase_times

    def noise(self, batch_size: int) -> torch.Tensor:
        return torch.randn(batch_size, self.hp.noise_dim)

    def __call__(self, batch: dict, penalty: bool | None = None) -> None:
        """Train on ``batch``.

        Args:
            batch: ``image`` and ``tokens`` of one training batch.
            penalty: Whether the discriminator step applies the gradient penalty (when the config
                has one): None follows the model's lazy schedule, as training does; True or False
                lets a benchmark time either kind of batch without running a whole cycle.
        """
        images, tokens = batch["image"], batch["tokens"]
        marks = [time.perf_counter()]
        text = self.d_step(images, tokens, penalty)
        marks.append(time.perf_counter())
        self.g_step(images, tokens, *text)
        marks.append(time.perf_counter())
        m, hp = self.model, self.hp
        beta = ema_beta(images.shape[0], hp.ema_half_life_images, int(m.g_steps) * images.shape[0], hp.ema_rampup)
        for average, current in (
            (m.generator_ema, m.generator),
            (m.text_encoder_ema, m.text_encoder),
            (m.captioner_ema, m.captioner),
        ):
            update_ema(average, current, beta)
        marks.append(time.perf_counter())
        if self.phase_times is not None:
            for name, start, end in zip(("d_step", "g_step", "ema"), marks, marks[1:]):
                self.phase_times.setdefault(name, []).append(end - start)

    def d_step(
        self, images: torch.Tensor, tokens: torch.Tensor, penalty: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        m, hp = self.model, self.hp
        batch_size = images.shape[0]
        penalty_now = m.penalty_due() if penalty is None else penalty and m.has_gradient_penalty
        use_swaps = hp.swap_weight > 0
        with trains_only([m.discriminator, m.text_encoder], [m.generator, m.captioner]):
            texts = [tokens, swap_one_word(tokens, len(SPECIAL_TOKENS))] if use_swaps else [tokens]
            sentences = m.text_encoder(torch.cat(texts))[1].split(batch_size)
            sentence = sentences[0]
            with torch.no_grad():
                fake = m.generator(self.noise(batch_size), sentence.detach())
            if penalty_now:
                images = images.detach().requires_grad_(True)
            embedding, unconditional = m.discriminator.features(torch.cat([images, fake]))
            real = (embedding[:batch_size], unconditional[:batch_size])
            fake = (embedding[batch_size:], unconditional[batch_size:])
            text_embedding = m.discriminator.embed_text(sentence)
            swapped_embedding = m.discriminator.embed_text(sentences[1]) if use_swaps else None
            real_logits = m.discriminator.score(real, text_embedding)
            negatives = [
                (m.discriminator.score(fake, text_embedding), 1.0),
                (m.discriminator.score(real, text_embedding.roll(1, dims=0)), hp.mismatch_weight),
            ]
            if use_swaps:
                negatives.append((m.discriminator.score(real, swapped_embedding), hp.swap_weight))
            loss = losses.d_adversarial(real_logits, negatives, hp.adversarial_loss)
            if hp.contrastive_weight_d > 0:
                contrastive = losses.contrastive(real[0], text_embedding, hp.contrastive_temperature, swapped_embedding)
                loss = loss + hp.contrastive_weight_d * contrastive
            if penalty_now:
                if hp.gradient_penalty == "r1":
                    penalty = 0.5 * hp.gp_weight * losses.r1_penalty(real_logits, images)
                else:
                    penalty = hp.gp_weight * losses.matching_aware_gradient_penalty(real_logits, images, sentence)
                loss = loss + hp.gp_interval * penalty
            self.opt_d.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_d.step()
        m.d_steps += 1  # the model's own counters, so both paths end in the same state
        return sentence.detach(), sentences[1].detach() if use_swaps else None

    def g_step(
        self, images: torch.Tensor, tokens: torch.Tensor, sentence: torch.Tensor, swapped: torch.Tensor | None
    ) -> None:
        m, hp = self.model, self.hp
        with trains_only([m.generator, m.captioner], [m.discriminator, m.text_encoder]):
            fake = m.generator(self.noise(sentence.shape[0]), sentence)
            fake_features = m.discriminator.features(fake)
            text_embedding = m.discriminator.embed_text(sentence)
            loss = losses.g_adversarial(m.discriminator.score(fake_features, text_embedding), hp.adversarial_loss)
            if hp.contrastive_weight_g > 0:
                hard = m.discriminator.embed_text(swapped) if swapped is not None else None
                contrastive = losses.contrastive(fake_features[0], text_embedding, hp.contrastive_temperature, hard)
                loss = loss + hp.contrastive_weight_g * contrastive
            if hp.cycle_weight > 0:
                m.captioner.requires_grad_(False)
                cycle = losses.caption_cross_entropy(m.captioner(fake, tokens), tokens, PAD_ID)
                m.captioner.requires_grad_(True)
                loss = loss + hp.cycle_weight * cycle
            if hp.caption_weight > 0:
                logits = m.captioner.decode(m.captioner.encode(images), tokens[:, :-1])
                caption = losses.caption_cross_entropy(logits, tokens, PAD_ID, hp.caption_label_smoothing)
                loss = loss + hp.caption_weight * caption
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
        m.g_steps += 1
