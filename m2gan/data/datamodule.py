"""The Lightning data module: every image–caption format behind one interface."""

from __future__ import annotations

import functools
import inspect
import itertools
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset

from m2gan.batch import CaptionBatch, EvaluationBatch
from m2gan.data.captioned import CaptionedImages, Problems, verify_images
from m2gan.data.formats import coco_records, cub_records, folder_records
from m2gan.data.sampler import ResumableSampler
from m2gan.data.shapes import Background, ShapesDataset
from m2gan.negatives import WordPairs
from m2gan.prompts import PromptDataset, read_prompts
from m2gan.tokenizer import CaptionTokenizer

DataFormat = Literal["shapes", "coco", "cub", "folder", "webdataset"]


class CaptionDataModule(pl.LightningDataModule):
    """Serves tokenised image–caption batches of any supported format (``format``).

    Each batch is a dict: ``image`` (B, 3, H, W) float in [-1, 1], ``tokens`` (B, max_length) long,
    ``caption`` list of B strings, ``index`` (B,) long (the samples' dataset indices). Validation and
    test batches also hold ``references``: each image's reference captions (up to
    ``num_references``; the first is ``caption``), for caption metrics such as BLEU. The tokenizer is
    fitted on *training* captions when the module is built, so its vocabulary size is known before
    the model is (LightningCLI links it) and no validation text leaks into it.

    Formats (see :mod:`m2gan.data.formats` and :mod:`m2gan.data.shards` for the layouts):
    ``shapes`` (built in, procedural), ``coco``, ``cub``, ``folder`` (images + metadata.jsonl/csv or
    .txt files) and ``webdataset`` (tar shards, streamed). Samples that cannot be used (corrupt or
    missing images, empty captions, …) are skipped and counted; the count is logged once here, and
    a dataset with nothing usable fails here with the path and the first problems.

    Args:
        format: Which data to read.
        root: Dataset folder (``coco``, ``cub``, ``folder``).
        train_shards: ``webdataset`` training shards, brace patterns allowed (``data/{000..099}.tar``).
        val_shards: ``webdataset`` validation shards (read into memory once; also the test split).
        resolution: Image side in pixels (a power of two from 32 to 256 for the default networks).
        batch_size: Images per training step across all processes (the global batch): each of the
            N processes of a multi-device run (``trainer.devices × trainer.num_nodes``) loads
            ``batch_size / N``, so a config trains the same way on any number of devices. N must
            divide it. Validation and test batches are split the same way.
        train_size: ``shapes``: images in one training epoch (a virtual length; nothing is stored).
        val_size: ``shapes``: images in the validation split.
        test_size: ``shapes``: images in the test split.
        two_object_prob: ``shapes``: probability that a scene holds two objects.
        held_out: ``shapes``: (colour, shape) combinations such as ``"purple triangle"`` that the
            training split never shows (validation and test do): does the model compose words?
        background: ``shapes``: ``"gradient"`` (random dark gradients) or ``"black"`` (most pixels at
            the bottom of the range, like many real datasets' dark backgrounds).
        seed: ``shapes``: dataset seed; the same seed gives the same images and captions. Real data:
            seed of the training augmentation (each visit's crop and caption) and of the shuffling.
        augment: Real data: random crop and a random caption per visit for training (evaluation
            splits always use a centre crop and the first caption).
        flip: Real data, with ``augment``: mirror half the training images (off by default: captions
            may say "left" and "right").
        crop_to_box: ``cub``: crop each bird to its bounding box.
        val_fraction: ``folder`` without split sub-folders: share of files hashed into validation.
        test_fraction: ``folder`` without split sub-folders: share hashed into test.
        verify_images: Real data: decode every image once at setup and skip those that fail (costs
            about a millisecond per image); when off, they are skipped when first read.
        max_length: Tokens per caption, ``[BOS]``/``[EOS]`` included; longer captions are truncated.
        tokenizer_fit_size: Training images (shapes, shards: captions) whose captions build the vocabulary
            and the word-pair evidence of binding negatives (``m2gan.negatives.WordPairs``).
        min_word_frequency: Words seen fewer times in those captions become ``[UNK]``.
        num_references: Reference captions per validation/test image (COCO has 5).
        num_workers: Data-loader worker processes (0 loads in the training process).
        predict_prompts: For ``train.py predict``: a text file of prompts, one per line.
        predict_num_images: For ``train.py predict``: images per prompt.
        predict_seed: For ``train.py predict``: noise seed of the first image (row ``r`` uses ``predict_seed + r``).
    """

    def __init__(
        self,
        format: DataFormat = "shapes",
        root: str | None = None,
        train_shards: str | None = None,
        val_shards: str | None = None,
        resolution: int = 32,
        batch_size: int = 32,
        train_size: int = 51_200,
        val_size: int = 2_000,
        test_size: int = 512,
        two_object_prob: float = 0.25,
        held_out: tuple[str, ...] = (),
        background: Background = "gradient",
        seed: int = 0,
        augment: bool = True,
        flip: bool = False,
        crop_to_box: bool = True,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        verify_images: bool = True,
        max_length: int = 24,
        tokenizer_fit_size: int = 2_000,
        min_word_frequency: int = 1,
        num_references: int = 5,
        num_workers: int = 0,
        predict_prompts: str | None = None,
        predict_num_images: int = 1,
        predict_seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}")
        if resolution < 8:
            raise ValueError(f"data.resolution must be at least 8 pixels, got {resolution}")
        if num_references < 1:
            raise ValueError(f"data.num_references must be at least 1, got {num_references}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.skipped_at_load = 0
        self.datasets = self._build_datasets()
        train = self.datasets["train"]
        if isinstance(train, IterableDataset):
            fit_captions = (s["caption"] for s in itertools.islice(iter(train), tokenizer_fit_size))
        elif isinstance(train, CaptionedImages):  # every caption of the first images
            fit_captions = (c for record in train.records[:tokenizer_fit_size] for c in record.captions)
        else:
            fit_captions = (train.caption(i) for i in range(min(tokenizer_fit_size, len(train))))
        fit_captions = list(fit_captions)
        self.tokenizer = CaptionTokenizer.fit(fit_captions, max_length=max_length, min_frequency=min_word_frequency)
        # Where each word was seen, from the same captions: the evidence binding negatives need.
        self.word_pairs = WordPairs.of(self.tokenizer.encode(fit_captions), self.tokenizer.vocab_size)

    def ignored_settings(self) -> list[str]:
        """One line per setting given a value other than its default that this data format does not read."""
        return ignored_data_settings(self.hparams)

    def _build_datasets(self) -> dict:
        hp = self.hparams
        self.problems = problems = Problems()
        if hp.format == "shapes":
            sizes = (("train", hp.train_size), ("val", hp.val_size), ("test", hp.test_size))
            return {
                split: ShapesDataset(
                    split, size, hp.resolution, hp.seed, hp.two_object_prob, hp.held_out, hp.background
                )
                for split, size in sizes
            }
        if hp.format == "webdataset":
            from m2gan.data.shards import CaptionShards, ShardSamples

            if not hp.train_shards or not hp.val_shards:
                raise ValueError("data.format webdataset needs data.train_shards and data.val_shards")
            val = ShardSamples(hp.val_shards, hp.resolution, problems)
            datasets = {
                "train": CaptionShards(hp.train_shards, hp.resolution, hp.augment, hp.flip),
                "val": val,
                "test": val,
            }
            where, sizes = hp.val_shards, {"val": len(val)}
        else:
            if not hp.root:
                raise ValueError(f"data.format {hp.format} needs data.root (the dataset folder)")
            if hp.format == "coco":
                splits = coco_records(hp.root, problems)
            elif hp.format == "cub":
                splits = cub_records(hp.root, problems, hp.crop_to_box)
            else:
                splits = folder_records(hp.root, problems, hp.val_fraction, hp.test_fraction)
            if hp.verify_images:
                checked: dict[int, list] = {}  # a split may alias another (COCO's test is its val): verify once
                for split, records in splits.items():
                    if id(records) not in checked:
                        checked[id(records)] = verify_images(records, hp.resolution, problems)
                    splits[split] = checked[id(records)]
            datasets, built = {}, {}
            for split, records in splits.items():
                if id(records) not in built:
                    augment = hp.augment and split == "train"
                    name = f"{hp.format}:{hp.root}:{split}"
                    built[id(records)] = CaptionedImages(records, hp.resolution, name, augment, hp.flip, hp.seed)
                datasets[split] = built[id(records)]
            where, sizes = hp.root, {split: len(d) for split, d in datasets.items()}
        empty = [split for split, n in sizes.items() if n == 0]
        if empty:
            raise ValueError(
                f"{where}: no usable {'/'.join(empty)} samples ({hp.format} format)"
                + (f"; problems: {problems.summary()}" if problems.total else "")
            )
        counts = ", ".join(f"{n} {split}" for split, n in sizes.items())
        rank_zero_info(f"{hp.format} data at {where}: {counts} images")
        if problems.total:
            rank_zero_warn(f"{where}: skipped {problems.total} bad samples: {problems.summary()}")
        return datasets

    @property
    def vocab_size(self) -> int:
        """Size of the fitted vocabulary, special tokens included."""
        return self.tokenizer.vocab_size

    @property
    def max_length(self) -> int:
        """Tokens per encoded caption."""
        return self.tokenizer.max_length

    def collate(self, samples: list[dict | None], split: str = "train") -> CaptionBatch | EvaluationBatch:
        """Stack images and tokenise captions into one batch of ``split``; drop samples that failed to load."""
        kept = [s for s in samples if s is not None]
        if len(kept) < len(samples):
            self.skipped_at_load += len(samples) - len(kept)
            rank_zero_warn(f"{self.skipped_at_load} {split} images could not be read and were skipped so far")
        if not kept:
            raise RuntimeError(f"a whole {split} batch of images could not be read")
        samples = kept
        captions = [s["caption"] for s in samples]
        batch = CaptionBatch(
            image=torch.stack([s["image"] for s in samples]),
            tokens=self.tokenizer.encode(captions),
            paraphrase=self.tokenizer.encode([s.get("paraphrase", s["caption"]) for s in samples]),
            caption=captions,
            index=torch.tensor([s["index"] for s in samples], dtype=torch.long),
        )
        if split == "train":
            return batch
        dataset = self.datasets[split]
        references = [dataset.references(s["index"], self.hparams.num_references) for s in samples]
        return EvaluationBatch(**batch, references=references)

    def _loader(self, split: str, shuffle: bool, drop_last: bool) -> DataLoader:
        dataset = self.datasets[split]
        sampler = None
        if shuffle and not isinstance(dataset, IterableDataset):
            visits = isinstance(dataset, CaptionedImages) and dataset.augment  # its crops follow the visit
            trainer = getattr(self, "trainer", None)
            replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            sampler = ResumableSampler(len(dataset), self.hparams.seed, self._resumed_samples(), visits, replicas, rank)
        return DataLoader(
            dataset,
            batch_size=self.process_batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.hparams.num_workers,
            collate_fn=functools.partial(self.collate, split=split),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.hparams.num_workers > 0,
        )

    def batch_per_process(self, processes: int) -> int:
        """Each process's share of ``batch_size``; ``ValueError`` unless ``processes`` divides it."""
        if self.hparams.batch_size % processes:
            raise ValueError(
                f"data.batch_size={self.hparams.batch_size} is not divisible by the {processes} processes "
                "(trainer.devices × trainer.num_nodes): it is the global batch, split evenly between them"
            )
        return self.hparams.batch_size // processes

    @property
    def process_batch_size(self) -> int:
        """This process's share of ``batch_size`` (all of it without a trainer)."""
        trainer = getattr(self, "trainer", None)
        return self.batch_per_process(trainer.world_size if trainer is not None else 1)

    def _resumed_samples(self) -> int:
        """Training samples of the current epoch already used by the run being resumed (0 when not resuming).

        Lightning restores its loop progress before it asks for the training data loader, so the
        completed batches of the interrupted epoch are known here.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        # "processed", not "completed": a checkpoint saved in on_train_batch_end counts its batch only there.
        completed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        per_epoch = len(self.datasets["train"]) // self.hparams.batch_size  # training drops the last partial batch
        return completed * self.hparams.batch_size if completed < per_epoch else 0  # an ended epoch: start afresh

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
        return DataLoader(dataset, batch_size=self.process_batch_size, shuffle=False)


def ignored_data_settings(settings) -> list[str]:
    """One line per data setting (``CaptionDataModule``'s arguments: a mapping) given a value other
    than its default that its data format does not read."""
    defaults = inspect.signature(CaptionDataModule.__init__).parameters
    data_format = settings["format"]
    shapes, folders = data_format == "shapes", data_format in ("coco", "cub", "folder")
    rules = [
        *((name, not shapes, "only the built-in shapes data (data.format shapes) reads it")
          for name in ("train_size", "val_size", "test_size", "two_object_prob", "held_out", "background")),
        *((name, shapes, "the shapes data is drawn, not read: it has no files or augmentation")
          for name in ("augment", "flip", "verify_images")),
        ("flip", not shapes and not settings["augment"], "it mirrors augmented training images, and data.augment is off"),
        ("root", not folders, f"data.format {data_format} reads no folder"),
        *((name, data_format != "webdataset", "only data.format webdataset reads shards")
          for name in ("train_shards", "val_shards")),
        ("crop_to_box", data_format != "cub", "only data.format cub has bounding boxes"),
        *((name, data_format != "folder", "only data.format folder hashes files into splits")
          for name in ("val_fraction", "test_fraction")),
    ]  # fmt: skip
    lines: dict[str, str] = {}  # the first reason per setting
    for name, ineffective, why in rules:
        value = tuple(settings[name]) if isinstance(settings[name], list) else settings[name]
        if ineffective and value != defaults[name].default and name not in lines:
            lines[name] = f"data.{name} has no effect: {why}"
    return list(lines.values())
