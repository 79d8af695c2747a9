"""Checkpoint files: written so that a crash never corrupts them, read with one clear error.

Besides Lightning's own entries, an M2GAN checkpoint holds the tokenizer (:data:`TOKENIZER_KEY`)
and, when written between two training batches, the random states of the next one (:data:`RNG_KEY`).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from m2gan.atomic import atomic_path

TOKENIZER_KEY = "m2gan_tokenizer"
RNG_KEY = "m2gan_rng_states"
RENAMED_MODULES = {"generator_ema.": "ema.generator.", "text_encoder_ema.": "ema.text_encoder.",
                   "captioner_ema.": "ema.captioner."}  # fmt: skip
"""Weight-name prefixes of checkpoints written before the EMA networks became one ``SamplingPipeline``."""


class CheckpointError(ValueError):
    """A checkpoint or export that cannot be loaded; the message names the file and the reason."""


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read an M2GAN training checkpoint, unpickling tensors and plain containers only.

    ``weights_only=True``: a crafted checkpoint cannot run code; one that needs more is refused.
    Weights of older versions are renamed to today's (:func:`upgrade_state_dict`).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: truncated, corrupt, needs arbitrary unpickling, or not written by M2GAN.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused: it holds objects that only a full unpickling could rebuild, and unpickling can run "
            f"code ({str(error).splitlines()[0]}). Checkpoints written by M2GAN never need that; share models as "
            "exports instead (m2gan-export CKPT --out DIR: safetensors and JSON, no pickle)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {error}") from None
    if not isinstance(checkpoint, dict) or TOKENIZER_KEY not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{Path(path)}: not an M2GAN checkpoint (no model settings or tokenizer in it)")
    upgrade_state_dict(checkpoint.setdefault("state_dict", {}))
    return checkpoint


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> None:
    """Rename, in place, weights that older M2GAN versions stored under other names."""
    for name in [name for name in state if name.startswith(tuple(RENAMED_MODULES))]:
        prefix = name.split(".", 1)[0] + "."
        state[RENAMED_MODULES[prefix] + name[len(prefix) :]] = state.pop(name)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, fsync it, then rename it into place.

    A process killed at any moment — SIGKILL, preemption, power loss — leaves either the previous
    complete file under the checkpoint's name (``last.ckpt`` included) or the new complete one,
    never a truncated mix; a leftover ``.partial`` temporary is all it can leave behind. The
    folder is fsync'ed after the rename so the new name survives a power loss too.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_path(path) as temporary:
            self.write(checkpoint, temporary)
        descriptor = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def write(self, checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
        """Serialise ``checkpoint`` to ``path`` (the temporary file); a hook for tests that slow it down."""
        torch.save(checkpoint, path)
