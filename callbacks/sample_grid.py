"""Log grids and a table of EMA-generator samples for fixed prompts and fixed noise during training."""

from __future__ import annotations

import json
import os
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from callbacks.schedule import validation_dataset
from m2gan.grid import attention_grid, prompt_grid, stacked
from m2gan.loggers import run_dir


class SampleGrid(pl.Callback):
    """Every ``every_n_batches`` training batches, draw the fixed prompts with fixed noise.

    Logged to W&B (rank 0 only):

    * ``samples``: one image per prompt (its row of samples), the prompt as caption;
    * ``sample_table``: one row per prompt — the prompt, its samples, and what the EMA captioner
      reads in each of them (so text → image → text can be eyeballed);
    * ``attention_maps`` (word-attention generators only): for the first sample of each prompt,
      where each word acted at each attention stage (also ``batch_XXXXXXX_attention.png``).

    All are logged at the number of batches trained, the step of every W&B panel. The same goes
    to disk for offline users: ``<run folder>/samples/batch_XXXXXXX.png`` with the prompts written
    above their rows, and ``batch_XXXXXXX.jsonl`` with the prompts and captions.
    A last grid is drawn when training ends. Failing to write or log warns and never stops training.

    Args:
        prompts: Captions to draw, one row each; None takes the first ``num_prompts`` distinct
            captions of the validation split (so a data config needs no prompts of its own).
        every_n_batches: Interval in training batches.
        num_images: Images per prompt.
        seed: Noise seed: the same noise at every grid, so grids show how training changes them.
        scale: Up-scaling of each image in the PNG.
        num_prompts: With ``prompts=None``, how many validation captions to draw.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        every_n_batches: int = 500,
        num_images: int = 6,
        seed: int = 0,
        scale: int = 2,
        num_prompts: int = 6,
    ) -> None:
        if prompts is not None and not prompts:
            raise ValueError("SampleGrid needs at least one prompt (or prompts: null for validation captions)")
        for name, value in (("every_n_batches", every_n_batches), ("num_prompts", num_prompts)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        self.prompts = list(prompts) if prompts is not None else None
        self.every_n_batches, self.num_images, self.num_prompts = every_n_batches, num_images, num_prompts
        self.seed, self.scale = seed, scale
        self._last_step = 0

    def validation_prompts(self, trainer: pl.Trainer) -> list[str]:
        """The first ``num_prompts`` distinct captions of the validation split, in dataset order."""
        dataset, prompts = validation_dataset(trainer), []
        for index in range(len(dataset)):
            caption = dataset.caption(index)
            if caption.strip() and caption not in prompts:
                prompts.append(caption)
                if len(prompts) == self.num_prompts:
                    break
        if not prompts:
            raise RuntimeError("SampleGrid: the validation split holds no caption to draw; give prompts")
        return prompts

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = pl_module.batches_trained  # a resumed run continues the schedule

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if pl_module.batches_trained // self.every_n_batches > self._last_step // self.every_n_batches:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.batches_trained != self._last_step:
            self.log_grid(trainer, pl_module)

    def log_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the grid now, write its PNG and log it."""
        self._last_step = step = pl_module.batches_trained
        if not trainer.is_global_zero:
            return
        if self.prompts is None:
            self.prompts = self.validation_prompts(trainer)
        n, attention = self.num_images, []
        if pl_module.ema.has_word_attention:  # one generator pass gives the samples and their attention
            records = pl_module.ema.attention_maps(self.prompts, num_images=n, seed=self.seed)
            images = torch.stack([r.image for r in records])
            # the first sample of each prompt, word by word
            attention = [attention_grid(r.image, r.words, r.maps, 2 * self.scale) for r in records[::n]]
        else:
            images = pl_module.ema.generate(self.prompts, num_images=n, seed=self.seed)
        captions = pl_module.ema.caption(images)
        rows = [
            {
                "prompt": p,
                "captions": captions[i * n : (i + 1) * n],
                "grid": prompt_grid(images[i * n : (i + 1) * n], [p], self.scale),
            }
            for i, p in enumerate(self.prompts)
        ]
        try:
            folder = os.path.join(run_dir(trainer), "samples")
            os.makedirs(folder, exist_ok=True)
            prompt_grid(images, self.prompts, self.scale).save(os.path.join(folder, f"batch_{step:07d}.png"))
            if attention:
                stacked(attention).save(os.path.join(folder, f"batch_{step:07d}_attention.png"))
            with open(os.path.join(folder, f"batch_{step:07d}.jsonl"), "w", encoding="utf-8") as file:
                for row in rows:
                    file.write(json.dumps({"prompt": row["prompt"], "captions": row["captions"]}) + "\n")
        except OSError as error:
            warnings.warn(f"could not write the sample grid at batch {step}: {error}", stacklevel=1)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                try:
                    self._log_wandb(logger, rows, step, attention)
                except Exception as error:  # noqa: BLE001 - a logging failure must not stop training
                    warnings.warn(f"could not log the samples to W&B: {error}", stacklevel=1)

    @staticmethod
    def _log_wandb(logger: WandbLogger, rows: list[dict], step: int, attention: list) -> None:
        import wandb

        prompts = [row["prompt"] for row in rows]
        logger.log_image(key="samples", images=[row["grid"] for row in rows], caption=prompts, step=step)
        if attention:
            logger.log_image(key="attention_maps", images=attention, caption=prompts, step=step)
        logger.log_table(
            key="sample_table",
            columns=["prompt", "samples", "captions of the samples"],
            data=[[row["prompt"], wandb.Image(row["grid"]), " | ".join(row["captions"])] for row in rows],
            step=step,
        )
