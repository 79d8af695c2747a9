"""What the benchmarks' ``--quick`` smoke runs read in place of a trained checkpoint."""

from __future__ import annotations

from m2gan.data import CaptionDataModule
from m2gan.model import M2GAN
from m2gan.settings import ObjectiveSettings


def untrained_model(data: CaptionDataModule | None = None, **objective) -> M2GAN:
    """An untrained model of ``data`` (default: 2,000 captions of the default data), in eval mode,
    with the data's tokenizer and word pairs; ``objective``: :class:`ObjectiveSettings` fields."""
    if data is None:
        data = CaptionDataModule(train_size=2000, val_size=50)
        data.setup("fit")
    model = M2GAN(vocab_size=data.vocab_size, max_length=data.max_length, objective=ObjectiveSettings(**objective))
    model.set_tokenizer(data.tokenizer)
    model.objective.word_pairs = data.word_pairs
    return model.eval()
