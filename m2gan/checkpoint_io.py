"""Checkpoint files: written so that a crash never corrupts them, read with one clear error.

Besides Lightning's own entries, an M2GAN checkpoint holds the tokenizer (:data:`TOKENIZER_KEY`),
the word-pair evidence of binding negatives (:data:`WORD_PAIRS_KEY`) and, when written between two
training batches, the random states of the next one (:data:`RNG_KEY`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from m2gan.atomic import atomic_path
from m2gan.pretrained import PretrainedTextError
from m2gan.settings import ModelSettings, SettingsError
from m2gan.tokenizer import CaptionTokenizer

if TYPE_CHECKING:
    from m2gan.pipeline import SamplingPipeline

TOKENIZER_KEY = "m2gan_tokenizer"
RNG_KEY = "m2gan_rng_states"
WORD_PAIRS_KEY = "m2gan_word_pairs"
T = TypeVar("T")
RENAMED_MODULES = {"generator_ema.": "ema.generator.", "text_encoder_ema.": "ema.text_encoder.",
                   "captioner_ema.": "ema.captioner."}  # fmt: skip
"""Weight-name prefixes of checkpoints written before the EMA networks became one ``SamplingPipeline``."""


class CheckpointError(ValueError):
    """A checkpoint or export that cannot be loaded; the message names the file and the reason."""


class TextSourceError(CheckpointError):
    """A checkpoint or export whose pretrained text model is not at the folder it names (or was given)."""

    def with_hint(self, option: str) -> str:
        """The message, with how to give the original folder through ``option``."""
        return f"{self}: give the original folder with {option}"


class CheckpointMismatch(ValueError):
    """A checkpoint that does not belong to this model or data configuration."""


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
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: not a readable checkpoint: the file is empty (0 bytes)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused: it holds objects that only a full unpickling could rebuild, and unpickling can run "
            f"code ({str(error).splitlines()[0]}). Checkpoints written by M2GAN never need that; share models as "
            "exports instead (m2gan-export CKPT --out DIR: safetensors and JSON, no pickle)"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch.load fails on foreign bytes with many error types
        message = (str(error).splitlines() or [""])[0].split(". ")[0][:160]
        reason = message if isinstance(error, RuntimeError) and message else f"{type(error).__name__} {message}".strip()
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupt or another kind of file: {reason})"
        ) from None
    if not isinstance(checkpoint, dict) or TOKENIZER_KEY not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{Path(path)}: not an M2GAN checkpoint (no model settings or tokenizer in it)")
    if not isinstance(checkpoint["hyper_parameters"], dict) or not isinstance(checkpoint.get("state_dict", {}), dict):
        raise CheckpointError(f"{Path(path)}: not an M2GAN checkpoint (its settings or weights are not tables)")
    upgrade_state_dict(checkpoint.setdefault("state_dict", {}))
    return checkpoint


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> None:
    """Rename, in place, weights that older M2GAN versions stored under other names."""
    for name in [name for name in state if name.startswith(tuple(RENAMED_MODULES))]:
        prefix = name.split(".", 1)[0] + "."
        state[RENAMED_MODULES[prefix] + name[len(prefix) :]] = state.pop(name)


def saved_settings(source: str | os.PathLike, saved: dict) -> ModelSettings:
    """The model settings a checkpoint or export saved, by any M2GAN version (:meth:`ModelSettings.from_saved`).

    Raises:
        CheckpointError: a setting this version does not know (written by a newer or different M2GAN).
    """
    try:
        return ModelSettings.from_saved(saved)
    except SettingsError as error:
        raise CheckpointError(
            f"{source}: written by a newer or different M2GAN: {error}; load it with the M2GAN version that wrote it"
        ) from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: its model settings are not valid here: {error}") from None


def checkpoint_tokenizer(
    checkpoint: dict, pipeline: SamplingPipeline, expected: CaptionTokenizer | None
) -> CaptionTokenizer:
    """The checkpoint's tokenizer, if it equals ``expected`` (when given) and fits ``pipeline``'s networks."""
    if TOKENIZER_KEY not in checkpoint:
        raise CheckpointMismatch("checkpoint holds no tokenizer: it was not written by M2GAN")
    try:
        saved = CaptionTokenizer.from_json(checkpoint[TOKENIZER_KEY])
    except ValueError as error:
        raise CheckpointMismatch(f"the checkpoint's tokenizer is unreadable: {error}") from None
    if expected is not None and saved != expected:
        raise CheckpointMismatch(
            "the checkpoint's tokenizer differs from the data module's: it was trained on other data or "
            "another data config (max_length, vocabulary); resume it with the config it was trained with"
        )
    try:
        pipeline.check_tokenizer(saved)
    except ValueError as error:
        raise CheckpointMismatch(f"{error}: the checkpoint was trained with another config") from None
    return saved


def check_generator_output(checkpoint: dict, settings: ModelSettings, source: str | os.PathLike = "checkpoint") -> None:
    """The checkpoint's generator must end as ``settings``' does: the same weights draw other images otherwise.
    ``source`` names the checkpoint in the error of settings it cannot read."""
    if "hyper_parameters" not in checkpoint:  # not one of Lightning's: nothing to compare with
        return
    saved = saved_settings(source, checkpoint["hyper_parameters"]).generator.generator_output
    if saved != settings.generator.generator_output:
        raise CheckpointMismatch(
            f"the checkpoint's generator ends in {saved}, this model's in {settings.generator.generator_output}: "
            f"load it with --model.generator.generator_output {saved}"
        )


def check_resumable(path: str | os.PathLike, model: Any, tokenizer: CaptionTokenizer | None = None) -> None:
    """Check, without loading it, that the checkpoint at ``path`` can resume or evaluate ``model`` (an ``M2GAN``).

    It must be readable, hold weights of the module's names and shapes, and a tokenizer equal to
    ``tokenizer`` (the data's, when given).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: what does not fit, naming ``path`` and the weights.
    """
    checkpoint = read_checkpoint(path)
    try:  # the tokenizer first: when the data differs, that is the clearer reason
        checkpoint_tokenizer(checkpoint, model.ema, tokenizer)
        check_generator_output(checkpoint, model.settings, path)
    except CheckpointMismatch as error:
        raise CheckpointError(f"{path}: {error}") from None
    model.upgrade_state_dict(checkpoint["state_dict"])
    check_weights(path, model, checkpoint["state_dict"])
    check_text_sources(path, model, checkpoint["state_dict"])


def load_module(cls: type, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The ``M2GAN`` (``cls``) of a training checkpoint, in eval mode; bad files raise one :class:`CheckpointError`."""
    checkpoint = read_checkpoint(path, map_location)
    settings = saved_settings(path, checkpoint["hyper_parameters"])
    model = valid_settings(path, lambda: cls(**vars(settings)))
    try:
        model.on_load_checkpoint(checkpoint)
    except CheckpointMismatch as error:
        raise CheckpointError(f"{path}: {error}") from None
    load_weights(path, model, checkpoint["state_dict"])  # renamed and completed by on_load_checkpoint
    return model.to(map_location).eval()


def valid_settings(source: str | os.PathLike, make: Callable[[], T]) -> T:
    """``make()``, with the errors of settings or a tokenizer it refuses (TypeError, ValueError,
    KeyError, AttributeError) as one CheckpointError."""
    try:
        return make()
    except CheckpointError:
        raise
    except PretrainedTextError as error:  # names its folder and reason already
        raise CheckpointError(f"{source}: {error}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{source}: its model settings are not valid here: {error!r}") from None


def load_weights(
    source: str | os.PathLike, module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str = ""
) -> None:
    """Load ``state`` into ``module`` strictly; a mismatch names the weights as ``source`` calls them (``prefix`` + name)."""
    check_weights(source, module, state, prefix)
    check_text_sources(source, module, state)
    module.load_state_dict(state)


def check_weights(
    source: str | os.PathLike, module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str = ""
) -> None:
    """Raise a :class:`CheckpointError` naming the weights unless ``state`` fits ``module`` exactly."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(n for n in set(expected) & set(state) if expected[n].shape != state[n].shape)
    problems = []
    if missing:
        problems.append(f"missing {_summary(missing, prefix)}")
    if unexpected:
        problems.append(f"unexpected {_summary(unexpected, prefix)}")
    if wrong_shape:
        problems.append(f"shapes differ for {_summary(wrong_shape, prefix)}")
    if problems:
        raise CheckpointError(
            f"{source}: does not fit this model ({'; '.join(problems)}); it was written by another M2GAN version "
            "or config"
        )


def check_text_sources(source: str | os.PathLike, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise a :class:`CheckpointError` unless each pretrained text model in ``module`` is the one of ``state``."""
    for name, submodule in module.named_modules():
        saved = state.get(f"{name}.source_digest" if name else "source_digest")
        if saved is not None and hasattr(submodule, "check_source"):
            try:
                submodule.check_source(saved)
            except ValueError as error:
                raise TextSourceError(f"{source}: {error}") from None


def _summary(names: list[str], prefix: str, shown: int = 3) -> str:
    modules = sorted({prefix + name.split(".", 1)[0] for name in names})
    names = [prefix + name for name in names]
    listed = ", ".join(names[:shown]) + (f", … ({len(names)} in all)" if len(names) > shown else "")
    return f"weights of {', '.join(modules)}: {listed}"


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
