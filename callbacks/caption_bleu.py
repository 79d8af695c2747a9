"""Caption BLEU on validation images, a caption table, and the cycle check of the generator."""

from __future__ import annotations

import json
import os
import warnings

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from callbacks.schedule import ValidationSchedule
from m2gan.batch import EvaluationBatch
from m2gan.eval.bleu import corpus_bleu
from m2gan.eval.gather import gather_by_index
from m2gan.images import to_uint8
from m2gan.loggers import run_dir


class CaptionBLEU(pl.Callback):
    """Caption real validation images with the EMA captioner and score them with corpus BLEU.

    At every ``every_n_validations``-th validation run, each validation image is captioned (through
    the model's public :meth:`caption`) and compared with *all* its reference captions (the
    batch's ``references``; a batch without them falls back to its ``caption``). Logged:

    * ``val/bleu1`` … ``val/bleu4`` — conventions in :mod:`m2gan.eval.bleu` (normalised words,
      no smoothing, closest reference length with ties to the shorter);
    * ``val/cycle_bleu4`` (if ``cycle``) — the generator draws each validation caption, the
      captioner describes the drawing, and that description is scored against the same references:
      high only if the generator draws what the text says and the captioner reads it back;
    * a table of the first ``num_table_images`` validation images (image, caption, references),
      to W&B and as ``<run folder>/captions/batch_XXXXXXX.jsonl``. (Generated images of fixed
      prompts and their captions are :class:`~callbacks.SampleGrid`'s table.)

    Under DDP each rank captions its share; the results are gathered and de-duplicated by dataset
    index (the distributed sampler repeats samples to even out ranks), so every validation image
    counts exactly once. Batches must then carry ``index``.

    Args:
        every_n_validations: Run at every n-th validation (1 = every one).
        num_beams: Beam width of the captions (1 = greedy).
        cycle: Also compute ``val/cycle_bleu4``.
        num_table_images: Validation images shown in the table.
        seed: Noise seed of the images drawn for the cycle check.
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        num_beams: int = 1,
        cycle: bool = True,
        num_table_images: int = 16,
        seed: int = 0,
    ) -> None:
        self.schedule, self.num_beams, self.cycle = ValidationSchedule(every_n_validations), num_beams, cycle
        self.num_table_images, self.seed = num_table_images, seed
        self._active = False
        self._rows: dict[str, list] = {}  # per column, one entry per validation image of this process
        self._table: list[dict] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = self.schedule.due(trainer)
        self._rows, self._table = {"index": [], "caption": [], "cycle": [], "references": []}, []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs,
        batch: EvaluationBatch,
        batch_idx: int,
        dataloader_idx=0,
    ) -> None:
        if not self._active:
            return
        images, captions = batch["image"], list(batch["caption"])
        references = batch.get("references") or [[caption] for caption in captions]
        if "index" in batch:
            indices = batch["index"].tolist()
        elif trainer.world_size > 1:
            raise ValueError("CaptionBLEU under DDP needs batches with an 'index' entry to count each image once")
        else:  # one process sees every image once: number them as they come
            seen = len(self._rows["index"])
            indices = list(range(seen, seen + len(captions)))
        hypotheses = pl_module.ema.caption(images, num_beams=self.num_beams)
        cycled = [None] * len(captions)
        if self.cycle:
            drawn = pl_module.ema.generate(captions, seed=self.seed + batch_idx)
            cycled = pl_module.ema.caption(drawn, num_beams=self.num_beams)
        normalise = pl_module.tokenizer.normalize
        for i, (index, hypothesis, cycle) in enumerate(zip(indices, hypotheses, cycled)):
            refs = [normalise(r) for r in references[i]]
            for column, value in zip(("index", "caption", "cycle", "references"), (index, hypothesis, cycle, refs)):
                self._rows[column].append(value)
            if trainer.is_global_zero and len(self._table) < self.num_table_images:
                image = to_uint8(images[i].cpu())
                self._table.append({"index": index, "image": image, "caption": hypothesis, "references": refs})

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        columns = {name: values for name, values in self._rows.items() if name != "index"}
        rows = gather_by_index(self._rows["index"], columns)  # every process's images, each once
        if not rows:
            return
        scores = corpus_bleu(rows["caption"], rows["references"])
        metrics = {f"val/{name}": value for name, value in scores.items()}
        if self.cycle:
            metrics["val/cycle_bleu4"] = corpus_bleu(rows["cycle"], rows["references"])["bleu4"]
        # Every rank holds the same gathered values, so no further reduction is needed.
        for name, value in metrics.items():
            pl_module.log(name, value, sync_dist=False)
        if trainer.is_global_zero:
            self._write_table(trainer, pl_module.batches_trained)

    def _write_table(self, trainer: pl.Trainer, step: int) -> None:
        try:
            folder = os.path.join(run_dir(trainer), "captions")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"batch_{step:07d}.jsonl"), "w") as file:
                for row in self._table:
                    file.write(json.dumps({k: v for k, v in row.items() if k != "image"}) + "\n")
        except OSError as error:
            warnings.warn(f"could not write the caption table at batch {step}: {error}", stacklevel=1)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                try:
                    self._log_wandb(logger, step)
                except Exception as error:  # noqa: BLE001 - a logging failure must not stop training
                    warnings.warn(f"could not log the caption table to W&B: {error}", stacklevel=1)

    def _log_wandb(self, logger: WandbLogger, step: int) -> None:
        import wandb

        logger.log_table(
            key="captions",
            columns=["image", "caption", "references"],
            data=[
                [wandb.Image(r["image"].permute(1, 2, 0).numpy()), r["caption"], " | ".join(r["references"])]
                for r in self._table
            ],
            step=step,
        )
