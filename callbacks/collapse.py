"""Say so when the generator collapses: black, flat or identical images, or images that ignore their
prompts, however healthy the losses look."""

from __future__ import annotations

import sys

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn

from callbacks.schedule import validation_dataset
from m2gan.images import to_uint8
from m2gan.model import CollapseError


def image_statistics(images: torch.Tensor) -> dict[str, float]:
    """How much images (N, 3, H, W) vary, in pixel values scaled to [0, 1] (uint8 or [-1, 1] input).

    ``detail``: the spread of pixel values within each image, averaged over images (0: each image is
    one flat colour). ``spread``: the spread of each pixel across the images, averaged over pixels
    (0: all images are the same). ``mean``: the mean pixel value (0: black).
    """
    pixels = (images if images.dtype == torch.uint8 else to_uint8(images)).float() / 255  # (N, 3, H, W)
    return {
        "detail": pixels.flatten(1).std(dim=1).mean().item(),
        "spread": pixels.std(dim=0).mean().item() if len(pixels) > 1 else 0.0,
        "mean": pixels.mean().item(),
    }


def prompt_dependence(images: torch.Tensor, num_prompts: int) -> float:
    """How much more images of different prompts differ than images of one prompt: the ANOVA F ratio.

    ``images`` (P * N, 3, H, W) hold N drawings (different noise) of each of P prompts, prompt-major.
    Per pixel, N times the variance of the P prompt means over the mean variance within a prompt,
    averaged over pixels. A generator whose images do not depend on the prompt scores about 1 (the
    means of N draws of one distribution vary by 1/N of its variance), and 0 when every prompt gets
    the same N images; one that follows its prompts scores well above. Returns ``inf`` when the
    images of each prompt are identical but the prompts' differ.
    """
    pixels = (images if images.dtype == torch.uint8 else to_uint8(images)).float() / 255
    per_prompt = pixels.view(num_prompts, -1, pixels[0].numel())  # (P, N, 3 * H * W)
    images_per_prompt = per_prompt.shape[1]
    within = per_prompt.var(dim=1).mean()
    between = per_prompt.mean(dim=1).var(dim=0).mean()
    if within == 0:
        return float("inf") if between > 0 else 0.0
    return (images_per_prompt * between / within).item()


class CollapseAlarm(pl.Callback):
    """Every ``every_n_batches`` training batches, check that the EMA generator still draws pictures.

    It draws ``num_images`` images (fixed noise) for each of the first ``num_prompts`` validation
    captions and compares two figures of :func:`image_statistics` with the same figures of those
    captions' real images:

    * *flat*: ``detail`` below ``threshold`` × the real images' (each image one colour, e.g. black);
    * *all alike*: ``spread`` below ``threshold`` × the real images' (every prompt and noise gives
      the same image);
    * *ignores its prompts*: :func:`prompt_dependence` below ``prompt_threshold`` (images of
      different prompts differ no more than images of one prompt do: pictures, but not of what
      was asked, as when the critic wins everything). Checked when the prompts are at least two
      different captions and ``num_images`` is at least 2.

    At the first check that finds either (and again after a recovery), it prints one line naming
    the symptom and the batch, and records it in every logger: ``collapse/alarm`` (1 or 0 at every
    check, with ``collapse/detail`` and ``collapse/spread`` as ratios to the real images', and
    ``collapse/prompt_dependence``), and in
    a W&B run's summary ``collapse/detected``, ``collapse/batch`` and ``collapse/symptom``, plus a
    ``wandb.alert`` when the run is online. A run that ends collapsed says so again at its end.

    With ``stop``, training stops at that check with a :class:`~m2gan.model.CollapseError` (one
    line, exit status 1 from ``train.py``). The check runs before the checkpoint callbacks see the
    batch (Lightning calls them last), so when ``every_n_batches`` divides the checkpoint interval,
    every checkpoint on disk was written at a check that found the images healthy.

    Args:
        every_n_batches: Interval of the checks in training batches.
        num_prompts: Validation captions drawn at each check.
        num_images: Images per caption (different noise).
        threshold: A figure below this share of the real images' is a collapse.
        prompt_threshold: A prompt dependence (F ratio) below this says the images ignore their
            prompts (about 1 when they do; a generator that follows its prompts scores well above:
            benchmarks/README.md, "Collapse alarm: images that ignore their prompts").
        stop: Stop training at the first check that finds a collapse.
        seed: Noise seed of the drawn images (the same noise at every check).
    """

    def __init__(
        self,
        every_n_batches: int = 500,
        num_prompts: int = 8,
        num_images: int = 4,
        threshold: float = 0.1,
        prompt_threshold: float = 2.0,
        stop: bool = False,
        seed: int = 0,
    ) -> None:
        for name, value in (("every_n_batches", every_n_batches), ("num_prompts", num_prompts)):
            if value < 1:
                raise ValueError(f"CollapseAlarm: {name} must be positive, got {value}")
        if num_images * num_prompts < 2:
            raise ValueError("CollapseAlarm: it needs at least two images per check to tell whether they are alike")
        if not 0 < threshold < 1:
            raise ValueError(f"CollapseAlarm: threshold must lie between 0 and 1, got {threshold}")
        self.every_n_batches, self.num_prompts, self.num_images = every_n_batches, num_prompts, num_images
        if prompt_threshold < 0:
            raise ValueError(f"CollapseAlarm: prompt_threshold must not be negative, got {prompt_threshold}")
        self.threshold, self.prompt_threshold, self.stop, self.seed = threshold, prompt_threshold, stop, seed
        self.prompts: list[str] | None = None
        self.real: dict[str, float] | None = None
        self.collapsed_since: int | None = None  # batch of the check that found the current collapse
        self.message: str | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.real is not None:
            return
        dataset, images, self.prompts = validation_dataset(trainer), [], []
        for index in range(len(dataset)):
            sample = dataset[index]
            if sample is not None:  # an unreadable image, counted by the data module
                images.append(sample["image"])
                self.prompts.append(dataset.caption(index))
            if len(images) == self.num_prompts:
                break
        if len(images) < 2:
            rank_zero_warn("CollapseAlarm disabled: the validation split has under two readable images to compare with")
            return
        self.real = image_statistics(torch.stack(images))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        batch_number = pl_module.batches_trained
        if self.real is None or batch_number % self.every_n_batches:
            return
        symptoms = None
        if trainer.is_global_zero:  # the others wait for its verdict, so every rank stops alike
            symptoms = self.check(pl_module)
        symptoms = trainer.strategy.broadcast(symptoms, src=0)
        self.record(trainer, batch_number, symptoms)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.collapsed_since is not None and trainer.is_global_zero:
            print(f"m2gan: training ended collapsed: {self.message}", file=sys.stderr)

    def check(self, pl_module: pl.LightningModule) -> dict:
        """The ratios of the drawn images' figures to the real images', and what they show."""
        images = pl_module.ema.generate(self.prompts, num_images=self.num_images, seed=self.seed)
        drawn = image_statistics(images)
        ratios = {name: drawn[name] / max(self.real[name], 1e-8) for name in ("detail", "spread")}
        found = []
        if ratios["detail"] < self.threshold:
            found.append(f"flat (mean pixel value {drawn['mean']:.2f}{', black' if drawn['mean'] < 0.02 else ''})")
        if ratios["spread"] < self.threshold:
            found.append(f"all alike ({len(self.prompts) * self.num_images} images of {len(self.prompts)} prompts)")
        elif self.num_images > 1 and len(set(self.prompts)) > 1:  # alike images say nothing about their prompts
            dependence = prompt_dependence(images, len(self.prompts))
            ratios["prompt_dependence"] = min(dependence, 1e3)  # finite in the logs (inf: one image per prompt)
            if dependence < self.prompt_threshold:
                found.append("ignoring their prompts (images of different prompts differ no more than those of one)")
        return {"ratios": ratios, "found": found}

    def record(self, trainer: pl.Trainer, batch_number: int, symptoms: dict) -> None:
        """Log the check's figures; on a new collapse, say it once in a line, in W&B, and stop if asked."""
        found, ratios = symptoms["found"], symptoms["ratios"]
        metrics = {"collapse/alarm": float(bool(found))} | {f"collapse/{k}": v for k, v in ratios.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=batch_number)
        if not found:
            self.collapsed_since = self.message = None
            return
        if self.collapsed_since is not None:  # still collapsed: already said
            return
        self.collapsed_since = batch_number
        self.message = (
            f"collapse alarm at batch {batch_number}: the EMA generator's images are {' and '.join(found)}; "
            f"detail {ratios['detail']:.3f} and spread {ratios['spread']:.3f} of the real images'"
            + (f", prompt dependence {ratios['prompt_dependence']:.2f}" if "prompt_dependence" in ratios else "")
            + " "
            "(README: Collapse alarm)"
        )
        if trainer.is_global_zero:
            print(f"m2gan: {self.message}", file=sys.stderr)
            self._tell_wandb(trainer, batch_number, " and ".join(found))
        if self.stop:
            raise CollapseError(f"{self.message}; stopped (CollapseAlarm stop): the checkpoints on disk are from before")

    def _tell_wandb(self, trainer: pl.Trainer, batch_number: int, symptom: str) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            try:
                run = logger.experiment
                run.summary.update(
                    {"collapse/detected": True, "collapse/batch": batch_number, "collapse/symptom": symptom}
                )
                if not run.offline:
                    run.alert(title="M2GAN run collapsed", text=self.message, level="ERROR")
            except Exception as error:  # noqa: BLE001 - W&B must never stop training
                print(f"m2gan: could not record the collapse in W&B ({error})", file=sys.stderr)
