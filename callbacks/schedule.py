"""When evaluation callbacks run (whether a stage validates, which validation runs they take part in), and what they read."""

from __future__ import annotations

import pytorch_lightning as pl


class ValidationSchedule:
    """Counts real validation runs (sanity checks excluded); every ``every``-th one, the first included, is due.

    Args:
        every: Take part in every n-th validation run (1 = all).
    """

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every_n_validations must be positive, got {every}")
        self.every, self.count = every, 0

    def due(self, trainer: pl.Trainer) -> bool:
        """Call once per validation run; True when this one is due."""
        if trainer.sanity_checking:
            return False
        self.count += 1
        return (self.count - 1) % self.every == 0


def will_validate(trainer: pl.Trainer, stage: str) -> bool:
    """Whether ``stage`` runs a validation loop, the only place evaluation callbacks need their networks.

    ``fit`` and ``validate`` do unless ``limit_val_batches`` is 0; then loading (or, for the shapes
    judge, training for about a minute) a feature network would be work for nothing.
    """
    return stage in ("fit", "validate") and trainer.limit_val_batches != 0


def validation_dataset(trainer: pl.Trainer):  # noqa: ANN201 - any map-style dataset with caption(i)
    """The validation split's dataset: of the loader Lightning built, else of the data module's own.

    Raises:
        RuntimeError: the run has no validation data.
    """
    loaders = trainer.val_dataloaders
    if loaders is None and trainer.datamodule is not None:
        loaders = trainer.datamodule.val_dataloader()
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    if loader is None:
        raise RuntimeError("this callback needs a validation dataloader")
    return loader.dataset
