"""Loading sampling pipelines, and a pickle-free export format.

Two things can be loaded with :func:`load`:

* a training checkpoint (``.ckpt``), unpickled with ``weights_only=True`` — tensors and plain
  containers only, so a crafted checkpoint cannot run code; one that needs more is refused;
* an export folder written by :func:`export` (or ``m2gan-export``): ``model.safetensors`` with the
  EMA text encoder, generator and captioner, and ``config.json`` with their sizes and the
  tokenizer. Nothing in it is ever unpickled.

Both give a :class:`~m2gan.pipeline.SamplingPipeline` in eval mode whose ``generate`` and
``caption`` behave the same. Neither builds the training module or the discriminator.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from m2gan.atomic import staged_folder
from m2gan.checkpoint_io import (
    RENAMED_MODULES,
    TOKENIZER_KEY,
    CheckpointError,
    TextSourceError,
    load_weights,
    read_checkpoint,
    saved_settings,
    valid_settings,
)
from m2gan.pipeline import PipelineConfig, SamplingPipeline
from m2gan.pretrained import copy_model_files
from m2gan.tokenizer import CaptionTokenizer

__all__ = ["CheckpointError", "export", "load", "load_checkpoint", "load_export"]

EXPORT_FORMAT = "m2gan-export"
EXPORT_VERSION = 3  # 1: the whole model's settings under "hparams", weights named generator_ema.* etc.; 2: flat sizes
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXPORTED_MODULES = ("text_encoder", "generator", "captioner")
TEXT_ENCODER_FOLDER = "text_encoder"
"""Where an export that includes its pretrained text model keeps that model's files."""


def load(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    ema: bool = True,
    text_encoder: str | os.PathLike | None = None,
) -> SamplingPipeline:
    """Load a training checkpoint (file) or an export (folder) for sampling, in eval mode.

    Args:
        ema: Sample with the EMA networks (the default); False takes a checkpoint's trained ones
            (an export holds only the EMA networks).
        text_encoder: Where the pretrained text model it was trained with lies now, if it moved
            (its files must hash as they did); None = the folder it names.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: the file is truncated or corrupt, needs arbitrary unpickling, was not
            written by M2GAN, or does not fit this version of the model (the message says what).
    """
    path = Path(path)
    if path.is_dir():
        if not ema:
            raise CheckpointError(f"{path}: an export holds only the EMA networks: load it with ema=True")
        return load_export(path, map_location, text_encoder)
    return load_checkpoint(path, map_location, ema, text_encoder)


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    ema: bool = True,
    text_encoder: str | os.PathLike | None = None,
) -> SamplingPipeline:
    """Load the sampling pipeline of a ``.ckpt`` written by training; see :func:`load`."""
    checkpoint = read_checkpoint(path, map_location)
    config = _pipeline_config(path, checkpoint["hyper_parameters"])
    prefix = "ema." if ema else ""
    state = {
        name[len(prefix) :]: value
        for name, value in checkpoint["state_dict"].items()
        if name.startswith(prefix) and name[len(prefix) :].split(".", 1)[0] in EXPORTED_MODULES
    }
    tokenizer = valid_settings(path, lambda: CaptionTokenizer.from_json(checkpoint[TOKENIZER_KEY]))
    pipeline = _build(path, config, tokenizer, text_encoder)
    load_weights(path, pipeline, state, prefix)
    return pipeline.to(map_location).eval()


def export(pipeline: SamplingPipeline, out_dir: str | os.PathLike, include_text_encoder: bool = False) -> Path:
    """Write a sampling pipeline's networks, sizes and tokenizer to ``out_dir`` (which must not exist, or be empty).

    The files are written to a temporary folder beside ``out_dir`` and moved into place at the end,
    so an interrupted export leaves nothing half-written. To export a training module, pass its
    EMA pipeline (``model.ema``).

    Args:
        include_text_encoder: With a pretrained text model, copy its folder's files into
            ``out_dir/text_encoder`` so that the export is self-contained; otherwise the export
            names the folder (and its hash), which must then be there when it is loaded.
    """
    if pipeline.tokenizer is None:
        raise ValueError("the model has no tokenizer: nothing could read its exports")
    text_folder = pipeline.config.text.text_encoder
    if include_text_encoder and text_folder is None:
        raise ValueError("the model has the built-in text encoder, whose weights every export holds already")
    tensors = {name: value.detach().cpu().contiguous() for name, value in pipeline.state_dict().items()}
    sizes = pipeline.config.to_dict()
    if include_text_encoder:
        sizes["text"]["text_encoder"] = TEXT_ENCODER_FOLDER  # relative: read from inside the export
    tokenizer = pipeline.tokenizer.to_json()
    config = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "pipeline": sizes, "tokenizer": tokenizer}
    with staged_folder(out_dir) as staging:
        save_file(tensors, staging / WEIGHTS_FILE, metadata={"format": EXPORT_FORMAT})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        if include_text_encoder:
            copy_model_files(Path(text_folder), staging / TEXT_ENCODER_FOLDER)
    return Path(out_dir)


def load_export(
    directory: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    text_encoder: str | os.PathLike | None = None,
) -> SamplingPipeline:
    """Load an export folder written by :func:`export` (this version or version 1); see :func:`load`."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise CheckpointError(f"{directory}: not an M2GAN export ({needed.name} missing)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path}: not valid JSON: {error}") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        shown = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{config_path}: not an M2GAN export (format {shown!r})")
    version = config.get("version", 0)
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise CheckpointError(
            f"{directory}: export version {version!r} is not one this M2GAN reads (1 to {EXPORT_VERSION})"
        )
    try:
        tensors = load_file(weights_path)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{weights_path}: not a readable safetensors file: {error}") from None
    if version < 2:
        sizes = valid_settings(config_path, lambda: _pipeline_config(directory, config["hparams"]))
        tensors = {_v1_name(name): value for name, value in tensors.items()}
    else:
        sizes = valid_settings(config_path, lambda: _export_sizes(config_path, config["pipeline"]))
    tokenizer = valid_settings(config_path, lambda: CaptionTokenizer.from_json(config["tokenizer"]))
    pipeline = _build(directory, sizes, tokenizer, text_encoder)
    load_weights(directory, pipeline, tensors, prefix="")
    return pipeline.to(map_location).eval()


def _export_sizes(config_path: Path, sizes: dict) -> PipelineConfig:
    """The pipeline settings of a format-2 or -3 export's ``config.json`` (flat or nested tables)."""
    if not isinstance(sizes, dict):
        raise CheckpointError(f"{config_path}: not an M2GAN export (\"pipeline\" is not a table of settings)")
    config = PipelineConfig.of(saved_settings(config_path, sizes))
    folder = config.text.text_encoder
    if isinstance(folder, str) and not os.path.isabs(folder):  # included in the export
        text = dataclasses.replace(config.text, text_encoder=str(config_path.parent / folder))
        config = dataclasses.replace(config, text=text)
    return config


def _v1_name(name: str) -> str:
    """A format-1 export's weight name (``generator_ema.…``) as the pipeline's (``generator.…``)."""
    prefix = name.split(".", 1)[0] + "."
    return RENAMED_MODULES.get(prefix, prefix).removeprefix("ema.") + name[len(prefix) :]


def _pipeline_config(source: str | os.PathLike, hparams: dict) -> PipelineConfig:
    """The pipeline settings of an ``M2GAN``'s saved settings; settings it did not save take their defaults."""
    return PipelineConfig.of(saved_settings(source, hparams))


def _build(
    source: str | os.PathLike,
    config: PipelineConfig,
    tokenizer: CaptionTokenizer,
    text_encoder: str | os.PathLike | None = None,
) -> SamplingPipeline:
    if text_encoder is not None:
        if config.text.text_encoder is None:
            raise CheckpointError(f"{source}: has the built-in text encoder: a pretrained model's folder cannot apply")
        text = dataclasses.replace(config.text, text_encoder=os.path.abspath(text_encoder))
        config = dataclasses.replace(config, text=text)
    return valid_settings(source, lambda: SamplingPipeline.build(config, tokenizer).requires_grad_(False))


def main(argv: list[str] | None = None) -> int:
    """``m2gan-export CKPT --out DIR``: write a checkpoint's EMA sampling networks as safetensors + JSON."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="m2gan-export", description=main.__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by train.py")
    parser.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    parser.add_argument("--text-encoder", help="where the pretrained text model lies now, if it moved")
    parser.add_argument(
        "--include-text-encoder",
        action="store_true",
        help="copy the pretrained text model's files into the export (else it names their folder, which must stay)",
    )
    args = parser.parse_args(argv)
    try:
        pipeline = load_checkpoint(args.checkpoint, text_encoder=args.text_encoder)
        out = export(pipeline, args.out, args.include_text_encoder)
    except (ValueError, FileNotFoundError) as error:
        message = error.with_hint("--text-encoder FOLDER") if isinstance(error, TextSourceError) else error
        print(f"m2gan-export: error: {message}", file=sys.stderr)
        return 1
    included = f", {TEXT_ENCODER_FOLDER}/" if args.include_text_encoder else ""
    print(f"exported to {out} ({WEIGHTS_FILE}, {CONFIG_FILE}{included})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
