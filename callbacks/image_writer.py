"""Write the images of ``train.py predict`` to disk with a manifest."""

from __future__ import annotations

import os

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from m2gan.loggers import run_dir
from m2gan.outputs import image_name, save_images


class ImageWriter(BasePredictionWriter):
    """Save each predicted image as a PNG and describe it in ``manifest.jsonl``.

    Image ``k`` of prompt ``i`` is ``{i:04d}_{k:02d}.png`` (more digits when there are more prompts
    or images, see :func:`~m2gan.outputs.image_name`); its manifest row holds the prompt and the
    seed of its noise. Under several processes each rank writes its own images and
    ``manifest_rank{r}.jsonl``.

    Args:
        output_dir: Folder of the images; None = ``<run folder>/predictions``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def _folder(self, trainer: pl.Trainer) -> str:
        folder = self.output_dir or os.path.join(run_dir(trainer), "predictions")
        os.makedirs(folder, exist_ok=True)
        return folder

    def write_on_batch_end(
        self, trainer, pl_module, prediction: dict, batch_indices, batch, batch_idx: int, dataloader_idx: int
    ) -> None:
        manifest = "manifest.jsonl" if trainer.world_size == 1 else f"manifest_rank{trainer.global_rank}.jsonl"
        loaders = trainer.predict_dataloaders
        rows = (loaders[0] if isinstance(loaders, list) else loaders).dataset  # a PromptDataset
        entries = [
            {
                "file": image_name(int(p), int(k), len(rows.prompts), rows.num_images),
                "prompt": prompt,
                "seed": int(seed),
            }
            for p, k, prompt, seed in zip(
                prediction["prompt_index"], prediction["image_index"], prediction["prompt"], prediction["seed"]
            )
        ]
        save_images(self._folder(trainer), prediction["images"], entries, manifest)
