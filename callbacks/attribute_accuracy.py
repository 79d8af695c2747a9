"""Built-in shapes data: does the generator draw the shape, colour, size and place a caption asks for?"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from callbacks.fid import shared_judge_file
from callbacks.schedule import ValidationSchedule, validation_dataset, will_validate
from m2gan.cache import cache_root
from m2gan.eval.shapes_judge import ATTRIBUTES, accuracy, attribute_labels, load_judge


class AttributeAccuracy(pl.Callback):
    """Judge EMA-generator samples for single-object validation captions with the shapes judge.

    At every ``every_n_validations``-th validation, the first ``num_samples`` single-object scenes of
    the validation split are drawn from their captions (fixed noise) and the judge — an attribute
    classifier trained on real shapes images, cached on disk — reads each attribute back. Logged:
    ``val/attr_acc/shape``, ``…/colour``, ``…/size``, ``…/position`` (chance: 1/4, 1/7, 1/2, 1/9).
    It needs a validation dataset with ground truth (``scene(i)``, as :class:`ShapesDataset`
    has); with any other data it warns once and turns itself off. Rank 0 computes, all ranks log.

    Args:
        num_samples: Single-object validation captions drawn and judged.
        every_n_validations: Evaluate at every n-th validation run.
        judge_weights_path: A judge file from :func:`m2gan.eval.shapes_judge.save_judge`; None = train
            one for the model's resolution on first use and cache it.
        batch_size: Images per generator pass.
        seed: Noise seed.
        cache_dir: Where the judge is cached; None = ``$M2GAN_CACHE`` or ``~/.cache/m2gan``.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        every_n_validations: int = 1,
        judge_weights_path: str | None = None,
        batch_size: int = 256,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError("num_samples and batch_size must be positive")
        self.num_samples, self.schedule = num_samples, ValidationSchedule(every_n_validations)
        self.batch_size, self.seed = batch_size, seed
        self.judge_weights_path, self.cache_dir = judge_weights_path, cache_dir or str(cache_root())
        self.judge: torch.nn.Module | None = None
        self.enabled = True
        self._captions: list[str] = []
        self._labels: dict[str, torch.Tensor] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.judge is None and will_validate(trainer, stage):
            path = self.judge_weights_path or shared_judge_file(trainer, pl_module.hparams.resolution, self.cache_dir)
            self.judge, _ = load_judge(path)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or not self.schedule.due(trainer):
            return
        if not self._captions and not self._read_validation_set(trainer):
            return
        values = self.evaluate(pl_module) if trainer.is_global_zero else None
        for name, value in trainer.strategy.broadcast(values, src=0).items():
            pl_module.log(name, value, sync_dist=False)

    def evaluate(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Draw the captions and judge them; ``{"val/attr_acc/<attribute>": accuracy}``."""
        images = torch.cat(
            [
                pl_module.ema.generate(self._captions[start : start + self.batch_size], seed=self.seed + start)
                for start in range(0, len(self._captions), self.batch_size)
            ]
        )
        self.judge.to(pl_module.device)
        scores = accuracy(self.judge, images, self._labels)
        return {f"val/attr_acc/{name}": scores[name] for name in ATTRIBUTES}

    def _read_validation_set(self, trainer: pl.Trainer) -> bool:
        dataset = validation_dataset(trainer)
        if not hasattr(dataset, "scene"):
            rank_zero_warn(f"AttributeAccuracy disabled: {type(dataset).__name__} has no ground truth (scene)")
            self.enabled = False
            return False
        single = [i for i in range(len(dataset)) if len(dataset.scene(i).objects) == 1][: self.num_samples]
        if not single:
            rank_zero_warn("AttributeAccuracy disabled: the validation split has no single-object scene")
            self.enabled = False
            return False
        rows = [attribute_labels(dataset.scene(i)) for i in single]
        self._captions = [dataset.caption(i) for i in single]
        self._labels = {name: torch.tensor([row[name] for row in rows]) for name in ATTRIBUTES}
        return True
