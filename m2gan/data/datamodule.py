"""Lightning data module for the built-in shapes data."""

from __future__ import annotations

import functools

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader

from m2gan.data.shapes import ShapesDataset
from m2gan.prompts import PromptDataset, read_prompts
from m2gan.tokenizer import CaptionTokenizer


class ShapesDataModule(pl.LightningDataModule):
    """Serves tokenised batches of the procedural shapes dataset.

    Each batch is a dict: ``image`` (B, 3, H, W) float in [-1, 1], ``tokens`` (B, max_length) long,
    ``caption`` list of B strings, ``index`` (B,) long (the samples' dataset indices). Validation and
    test batches also hold ``references``: for each image, ``num_references`` captions (the first is
    ``caption``), for caption metrics such as BLEU. The tokenizer is fitted on training captions when the module is
    built, so its vocabulary size is known before the model is (LightningCLI links it).

    Args:
        resolution: Image side in pixels (a power of two from 32 to 256 for the default networks).
        batch_size: Images per training batch.
        train_size: Images in one training epoch (a virtual length; nothing is stored).
        val_size: Images in the validation split.
        test_size: Images in the test split.
        two_object_prob: Probability that a scene holds two objects.
        max_length: Tokens per caption, ``[BOS]``/``[EOS]`` included; longer captions are truncated.
        tokenizer_fit_size: Training captions read to build the vocabulary.
        num_references: Reference captions per validation/test image (COCO has 5).
        num_workers: Data-loader worker processes (0 renders in the training process).
        seed: Dataset seed; the same seed gives the same images and captions.
        predict_prompts: For ``train.py predict``: a text file of prompts, one per line.
        predict_num_images: For ``train.py predict``: images per prompt.
        predict_seed: For ``train.py predict``: noise seed of the first image (row ``r`` uses ``predict_seed + r``).
    """

    def __init__(
        self,
        resolution: int = 32,
        batch_size: int = 32,
        train_size: int = 100_000,
        val_size: int = 512,
        test_size: int = 512,
        two_object_prob: float = 0.25,
        max_length: int = 24,
        tokenizer_fit_size: int = 2_000,
        num_references: int = 5,
        num_workers: int = 0,
        seed: int = 0,
        predict_prompts: str | None = None,
        predict_num_images: int = 1,
        predict_seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}")
        if num_references < 1:
            raise ValueError(f"data.num_references must be at least 1, got {num_references}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.datasets = {
            split: ShapesDataset(split, size, resolution, seed, two_object_prob)
            for split, size in (("train", train_size), ("val", val_size), ("test", test_size))
        }
        train = self.datasets["train"]
        fit_captions = (train.caption(i) for i in range(min(tokenizer_fit_size, train_size)))
        self.tokenizer = CaptionTokenizer.fit(fit_captions, max_length=max_length)

    @property
    def vocab_size(self) -> int:
        """Size of the fitted vocabulary, special tokens included."""
        return self.tokenizer.vocab_size

    @property
    def max_length(self) -> int:
        """Tokens per encoded caption."""
        return self.tokenizer.max_length

    def collate(self, samples: list[dict], split: str = "train") -> dict:
        """Stack images and tokenise captions into one batch of ``split``."""
        captions = [s["caption"] for s in samples]
        batch = {
            "image": torch.stack([s["image"] for s in samples]),
            "tokens": self.tokenizer.encode(captions),
            "caption": captions,
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        }
        if split != "train":
            dataset = self.datasets[split]
            batch["references"] = [dataset.references(s["index"], self.hparams.num_references) for s in samples]
        return batch

    def _loader(self, split: str, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.hparams.num_workers,
            collate_fn=functools.partial(self.collate, split=split),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # drop_last: the matching-aware loss pairs each image with another sample's caption.
        return self._loader("train", shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, drop_last=False)

    def predict_dataloader(self) -> DataLoader:
        if not self.hparams.predict_prompts:
            raise ValueError("predict needs prompts: pass --data.predict_prompts FILE (one prompt per line)")
        prompts, skipped = read_prompts(self.hparams.predict_prompts)
        if skipped:
            rank_zero_info(f"{self.hparams.predict_prompts}: {skipped} blank lines skipped")
        dataset = PromptDataset(prompts, self.hparams.predict_num_images, self.hparams.predict_seed)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=False)
