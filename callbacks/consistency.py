"""Does the generator draw what its prompt says, and more than one thing per prompt? R-precision and diversity."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from callbacks.schedule import ValidationSchedule, validation_dataset, will_validate
from m2gan.cache import cache_root
from m2gan.eval.evaluator import (
    EvaluatorRecipe,
    binding_candidate_sets,
    candidate_sets,
    caption_twins,
    diversity,
    embed_captions,
    embed_images,
    evaluator_file,
    load_evaluator,
    nearest_captions,
    r_precision,
)
from m2gan.images import to_uint8


class TextImageConsistency(pl.Callback):
    """R-precision and per-prompt diversity of EMA-generator samples, read by a dual encoder trained on the run's data.

    The evaluator (:mod:`m2gan.eval.evaluator`) is trained once on the training split and cached.
    At every ``every_n_validations``-th validation, for the first ``num_samples`` validation images
    and their captions, rank 0 computes and every rank logs:

    * ``val/r_precision``: each caption is drawn once (fixed noise); the image must pick its own
      caption out of ``candidates`` (itself and captions of other validation images whose text
      differs) by cosine similarity. Chance is ``1 / candidates``.
    * ``val/r_precision_real``: the same for the real images: the evaluator's own retrieval
      accuracy, the ceiling a generator can reach in its eyes, and how far to trust it.
    * ``val/r_precision_binding`` and ``val/r_precision_binding_real``: the same for the captions
      that have binding twins (the same words bound to the other object, e.g. the two colours
      exchanged): each image's candidates begin with its caption's twins, then random captions.
      Random captions almost never test binding; these do. Left out when no caption has a twin.
    * ``val/diversity``: ``diversity_images`` images of each of the first ``diversity_prompts``
      captions (different noise); their mean pairwise cosine distance in the evaluator's image
      space. 0: the generator ignores its noise.
    * ``val/diversity_same_caption_real``: the same distance within groups of real images that
      share each caption: the reference ``val/diversity`` should approach. The shapes data draws
      each caption's scene again (:meth:`ShapesDataset.renditions`); other data take the validation
      images whose captions are nearest in the evaluator's text space (identical ones first).
      ``val/diversity_ratio`` is ``val/diversity`` over it.
    * ``val/diversity_across_captions_real``: the distance within groups of real validation images
      of different captions: the spread of the whole data, an upper bound no single caption reaches.

    Args:
        num_samples: Validation images and captions in the R-precision sets.
        candidates: Captions each image chooses from (AttnGAN: 100).
        diversity_prompts: Captions drawn several times for the diversity figure.
        diversity_images: Images per caption for the diversity figure.
        every_n_validations: Evaluate at every n-th validation run.
        batch_size: Images per generator and evaluator pass.
        seed: Noise seed of the generated images, and of the candidate sets.
        evaluator_weights_path: An evaluator from :func:`m2gan.eval.evaluator.save_evaluator`; None =
            train one on the run's training data on first use and cache it.
        pool_size: Training pairs the evaluator learns from.
        steps: Training steps of the evaluator.
        cache_dir: Where the evaluator is cached; None = ``$M2GAN_CACHE`` or ``~/.cache/m2gan``.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        candidates: int = 100,
        diversity_prompts: int = 50,
        diversity_images: int = 8,
        every_n_validations: int = 1,
        batch_size: int = 256,
        seed: int = 0,
        evaluator_weights_path: str | None = None,
        pool_size: int = EvaluatorRecipe.pool_size,
        steps: int = EvaluatorRecipe.steps,
        cache_dir: str | None = None,
    ) -> None:
        counts = {"num_samples": num_samples, "candidates": candidates, "diversity_prompts": diversity_prompts,
                  "batch_size": batch_size, "pool_size": pool_size, "steps": steps}  # fmt: skip
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if diversity_images < 2:
            raise ValueError(f"diversity_images must be at least 2, got {diversity_images}")
        if candidates > num_samples:
            raise ValueError(f"candidates ({candidates}) cannot exceed num_samples ({num_samples})")
        self.num_samples, self.candidates = num_samples, candidates
        self.diversity_prompts, self.diversity_images = diversity_prompts, diversity_images
        self.schedule, self.batch_size, self.seed = ValidationSchedule(every_n_validations), batch_size, seed
        self.evaluator_weights_path = evaluator_weights_path
        self.recipe = EvaluatorRecipe(pool_size=pool_size, steps=steps)
        self.cache_dir = cache_dir or str(cache_root())
        self.evaluator: torch.nn.Module | None = None
        self.tokenizer = None  # the evaluator's own, read with it
        self.enabled = True
        self._real: dict | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.evaluator is not None or not self.enabled or not will_validate(trainer, stage):
            return
        if not self._choose_validation_set(trainer):  # checked first: training the evaluator would be for nothing
            return
        path = self.evaluator_weights_path
        if path is None:
            train = trainer.datamodule.datasets["train"] if trainer.datamodule is not None else None
            if not hasattr(train, "fingerprint"):
                rank_zero_warn(
                    "TextImageConsistency disabled: the training data has no fingerprint to key the evaluator"
                )
                self.enabled = False
                return
            resolution = pl_module.hparams.resolution
            tokenizer = trainer.datamodule.tokenizer  # the data's: the module receives it only after this hook
            if trainer.is_global_zero:  # the others wait while rank 0 trains it (seconds to a minute), then read it
                evaluator_file(train, tokenizer, resolution, self.recipe, self.cache_dir)
            trainer.strategy.barrier("evaluator")
            path = evaluator_file(train, tokenizer, resolution, self.recipe, self.cache_dir)
        self.evaluator, self.tokenizer, resolution = load_evaluator(path)  # it reads captions with its own tokenizer
        if resolution != pl_module.hparams.resolution:
            raise ValueError(
                f"TextImageConsistency: the evaluator {path} reads {resolution}px images, the model draws "
                f"{pl_module.hparams.resolution}px"
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or self._real is None or not self.schedule.due(trainer):
            return
        values = None
        if trainer.is_global_zero:
            if "text" not in self._real:
                self._read_validation_set(pl_module)
            values = self.evaluate(pl_module)
        for name, value in trainer.strategy.broadcast(values, src=0).items():
            pl_module.log(name, value, sync_dist=False)

    def evaluate(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Draw, embed and score; the metrics by their logged names."""
        real, n = self._real, self.batch_size
        captions = real["captions"]
        images = torch.cat(
            [pl_module.ema.generate(captions[i : i + n], seed=self.seed + i) for i in range(0, len(captions), n)]
        )
        prompts = captions[: self.diversity_prompts]
        several = pl_module.ema.generate(prompts, num_images=self.diversity_images, seed=self.seed, batch_size=n)
        groups = embed_images(self.evaluator, several, n).view(len(prompts), self.diversity_images, -1)
        spread = diversity(groups)
        drawn = embed_images(self.evaluator, images, n)
        metrics = {
            "val/r_precision": r_precision(drawn, real["text"][: len(captions)], real["sets"]),
            "val/r_precision_real": real["ceiling"],
            "val/diversity": spread,
            "val/diversity_same_caption_real": real["diversity_same_caption"],
            "val/diversity_ratio": spread / max(real["diversity_same_caption"], 1e-8),
            "val/diversity_across_captions_real": real["diversity_across_captions"],
        }
        if len(real["binding_rows"]):
            rows = real["binding_rows"]
            metrics["val/r_precision_binding"] = r_precision(drawn[rows], real["text"], real["binding_sets"])
            metrics["val/r_precision_binding_real"] = real["binding_ceiling"]
        return metrics

    def _choose_validation_set(self, trainer: pl.Trainer) -> bool:
        """The first ``num_samples`` readable validation samples and their candidate sets; False (and
        the callback off) when they hold fewer distinct captions than ``candidates``."""
        dataset, images, captions, indices = validation_dataset(trainer), [], [], []
        for index in range(min(len(dataset), self.num_samples)):
            sample = dataset[index]
            if sample is not None:  # an unreadable image, counted by the data module
                images.append(to_uint8(sample["image"]))
                captions.append(dataset.caption(index))
                indices.append(index)
        try:
            sets = candidate_sets(captions, self.candidates, self.seed)
        except ValueError as error:
            rank_zero_warn(f"TextImageConsistency disabled: {error}")
            self.enabled = False
            return False
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)  # twins are read off the data's token ids
        pairs = getattr(trainer.datamodule, "word_pairs", None)
        twins = caption_twins(captions, tokenizer, pairs) if tokenizer is not None else [[]] * len(captions)
        texts, rows, binding_sets = binding_candidate_sets(captions, twins, self.candidates, self.seed)
        self._real = {"images": torch.stack(images), "captions": captions, "sets": sets, "texts": texts,
                      "binding_rows": rows, "binding_sets": binding_sets}  # fmt: skip
        if hasattr(dataset, "renditions"):  # drawn again on rank 0 at the first evaluation
            self._real["renditions"] = (dataset.renditions, indices[: self.diversity_prompts])
        return True

    def _read_validation_set(self, pl_module: pl.LightningModule) -> None:
        """Embed the real validation images and captions once: they do not change during training."""
        real = self._real
        self.evaluator.to(pl_module.device)
        image_embeddings = embed_images(self.evaluator, real.pop("images"), self.batch_size)
        real["text"] = embed_captions(self.evaluator, self.tokenizer, real.pop("texts"), self.batch_size)  # captions, twins
        real["ceiling"] = r_precision(image_embeddings, real["text"][: len(real["captions"])], real["sets"])
        if len(real["binding_rows"]):
            rows = real["binding_rows"]
            real["binding_ceiling"] = r_precision(image_embeddings[rows], real["text"], real["binding_sets"])
        k, prompts = self.diversity_images, min(self.diversity_prompts, len(real["captions"]))
        groups = image_embeddings[: len(image_embeddings) // k * k].view(-1, k, image_embeddings.shape[-1])
        real["diversity_across_captions"] = diversity(groups[: self.diversity_prompts])
        if "renditions" in real:  # real images of each diversity caption, drawn again
            renditions, indices = real.pop("renditions")
            same = to_uint8(torch.cat([renditions(i, k, self.seed) for i in indices]))  # (P * K, 3, H, W)
            groups = embed_images(self.evaluator, same, self.batch_size).view(len(indices), k, -1)
        else:
            groups = image_embeddings[nearest_captions(real["text"][: len(real["captions"])], prompts, k)]
        real["diversity_same_caption"] = diversity(groups)
