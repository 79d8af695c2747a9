"""Loading models for sampling, and a pickle-free export format.

Two things can be loaded with :func:`load`:

* a training checkpoint (``.ckpt``), unpickled with ``weights_only=True`` — tensors and plain
  containers only, so a crafted checkpoint cannot run code; one that needs more is refused;
* an export folder written by :func:`export` (or ``m2gan-export``): ``model.safetensors`` with the
  EMA generator, EMA text encoder and EMA captioner, and ``config.json`` with the model's settings
  and tokenizer. Nothing in it is ever unpickled.

Both give an :class:`~m2gan.model.M2GAN` in eval mode whose :meth:`generate` and :meth:`caption`
behave the same.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from m2gan.model import M2GAN, TOKENIZER_KEY
from m2gan.outputs import staged_folder
from m2gan.tokenizer import CaptionTokenizer

EXPORT_FORMAT = "m2gan-export"
EXPORT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXPORTED_MODULES = ("generator_ema", "text_encoder_ema", "captioner_ema")


class CheckpointError(ValueError):
    """A checkpoint or export that cannot be loaded; the message names the file and the reason."""


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> M2GAN:
    """Load a training checkpoint (file) or an export (folder) for sampling, in eval mode.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: the file is truncated or corrupt, needs arbitrary unpickling, was not
            written by M2GAN, or does not fit this version of the model (the message says what).
    """
    path = Path(path)
    if path.is_dir():
        return load_export(path, map_location)
    return load_checkpoint(path, map_location)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> M2GAN:
    """Load a ``.ckpt`` written by training; see :func:`load`."""
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
        raise CheckpointError(f"{path}: not an M2GAN checkpoint (no model settings or tokenizer in it)")
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    model = _build(path, hparams, CaptionTokenizer.from_json(checkpoint[TOKENIZER_KEY]))
    state = checkpoint.get("state_dict", {})
    model.add_missing_counters(state)
    _load_weights(path, model, state, strict_modules=None)
    return model.to(map_location).eval()


def export(model: M2GAN, out_dir: str | os.PathLike) -> Path:
    """Write ``model``'s EMA networks and settings to ``out_dir`` (which must not exist, or be empty).

    The files are written to a temporary folder beside ``out_dir`` and moved into place at the end,
    so an interrupted export leaves nothing half-written.
    """
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer: nothing could read its exports")
    tensors = {
        name: value.detach().cpu().contiguous()
        for name, value in model.state_dict().items()
        if name.split(".", 1)[0] in EXPORTED_MODULES
    }
    config = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "hparams": {k: v for k, v in model.hparams.items() if not k.startswith("_")},
        "tokenizer": model.tokenizer.to_json(),
    }
    with staged_folder(out_dir) as staging:
        save_file(tensors, staging / WEIGHTS_FILE, metadata={"format": EXPORT_FORMAT})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return Path(out_dir)


def load_export(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> M2GAN:
    """Load an export folder written by :func:`export`; see :func:`load`."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise CheckpointError(f"{directory}: not an M2GAN export ({needed.name} missing)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path}: not valid JSON: {error}") from None
    if config.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{config_path}: not an M2GAN export (format {config.get('format')!r})")
    if config.get("version", 0) > EXPORT_VERSION:
        raise CheckpointError(
            f"{directory}: export version {config['version']} is newer than this M2GAN reads ({EXPORT_VERSION})"
        )
    try:
        tensors = load_file(weights_path)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{weights_path}: not a readable safetensors file: {error}") from None
    model = _build(directory, config["hparams"], CaptionTokenizer.from_json(config["tokenizer"]))
    _load_weights(directory, model, tensors, strict_modules=EXPORTED_MODULES)
    model.ema_only = True
    return model.to(map_location).eval()


def _build(source: str | os.PathLike, hparams: dict, tokenizer: CaptionTokenizer) -> M2GAN:
    known = set(inspect.signature(M2GAN.__init__).parameters) - {"self"}
    unknown = sorted(set(hparams) - known)
    if unknown:
        raise CheckpointError(
            f"{source}: written by a newer or different M2GAN: unknown model settings {unknown}; "
            "load it with the M2GAN version that wrote it"
        )
    try:
        model = M2GAN(**hparams)
        model.set_tokenizer(tokenizer)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: its model settings are not valid here: {error}") from None
    return model


def _load_weights(
    source: str | os.PathLike, model: M2GAN, state: dict[str, torch.Tensor], strict_modules: tuple[str, ...] | None
) -> None:
    expected = {
        name: value
        for name, value in model.state_dict().items()
        if strict_modules is None or name.split(".", 1)[0] in strict_modules
    }
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(n for n in set(expected) & set(state) if expected[n].shape != state[n].shape)
    problems = []
    if missing:
        problems.append(f"missing {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected {_summary(unexpected)}")
    if wrong_shape:
        problems.append(f"shapes differ for {_summary(wrong_shape)}")
    if problems:
        raise CheckpointError(
            f"{source}: does not fit this model ({'; '.join(problems)}); it was written by another M2GAN version "
            "or config"
        )
    model.load_state_dict(state, strict=strict_modules is None)


def _summary(names: list[str], shown: int = 3) -> str:
    modules = sorted({name.split(".", 1)[0] for name in names})
    listed = ", ".join(names[:shown]) + (f", … ({len(names)} in all)" if len(names) > shown else "")
    return f"weights of {', '.join(modules)}: {listed}"


def main(argv: list[str] | None = None) -> int:
    """``m2gan-export CKPT --out DIR``: write a checkpoint's EMA networks as safetensors + JSON."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="m2gan-export", description=main.__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by train.py")
    parser.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    args = parser.parse_args(argv)
    try:
        out = export(load_checkpoint(args.checkpoint), args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f"m2gan-export: error: {error}", file=sys.stderr)
        return 1
    print(f"exported to {out} ({WEIGHTS_FILE}, {CONFIG_FILE})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
