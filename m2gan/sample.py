"""``m2gan-sample``: draw images for prompts, or caption images, from a checkpoint or an export.

    m2gan-sample generate CKPT --prompt "a red circle on the left" --num-images 4 --out samples/
    m2gan-sample generate CKPT --prompts-file prompts.txt --seed 1 --grid --out samples/
    m2gan-sample caption CKPT photos/ cat.jpg [--num-beams 4] [--out captions.jsonl]
    m2gan-sample interpolate CKPT --prompt "a red circle" --prompt "a blue square" --frames 16 --out morph/
    m2gan-sample interpolate CKPT --prompt "a red circle" --frames 16 --out walk/          # noise walk
    m2gan-sample interpolate CKPT --prompt "a red circle" --truncation-sweep 0.25 0.5 1 2 --out sweep/

Also runnable as ``python -m m2gan.sample``. Every failure is one line on stderr and a non-zero
exit status, and nothing is left half-written: outputs appear only when the whole run succeeded.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from pathlib import Path

import torch
from PIL import Image

from m2gan.images import IMAGE_SUFFIXES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2gan-sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("checkpoint", help="a .ckpt written by train.py, or a folder written by m2gan-export")
        sub.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if present")
        sub.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
        sub.add_argument("--text-encoder", help="where the pretrained text model lies now, if it moved")
        sub.add_argument(
            "--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA networks (default)"
        )

    generate = commands.add_parser("generate", help="text -> image")
    common(generate)
    generate.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    generate.add_argument("--prompts-file", help="a UTF-8 text file, one prompt per line (blank lines skipped)")
    generate.add_argument("--num-images", type=int, default=1, help="images per prompt")
    generate.add_argument("--seed", type=int, default=0, help="noise seed: same seed, same images (same device)")
    generate.add_argument("--truncation", type=float, default=None, help="truncate the noise to ±this (off)")
    generate.add_argument("--grid", action="store_true", help="also write grid.png, the prompt above each row")
    generate.add_argument(
        "--attention-maps",
        action="store_true",
        help="also write attention/<image>.png: where each word acted, per attention stage (word-attention generators)",
    )
    generate.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")

    interpolate = commands.add_parser(
        "interpolate", help="frames along a path: prompt to prompt, a noise walk, or a truncation sweep"
    )
    common(interpolate)
    interpolate.add_argument(
        "--prompt", action="append", default=[], help="one prompt: a noise walk; several: a morph through them in order"
    )
    interpolate.add_argument("--frames", type=int, default=16, help="frames along the whole path, ends included")
    interpolate.add_argument("--seed", type=int, default=0, help="noise seed: the end frames are generate's images")
    interpolate.add_argument("--truncation", type=float, default=None, help="truncate the noise to ±this (off)")
    interpolate.add_argument(
        "--truncation-sweep", type=float, nargs="+", metavar="PSI", help="instead: one frame per truncation value"
    )
    interpolate.add_argument("--fps", type=float, default=8.0, help="frames per second of the GIF")
    interpolate.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")

    caption = commands.add_parser("caption", help="image -> text")
    common(caption)
    caption.add_argument("images", nargs="+", help="image files or folders of images")
    caption.add_argument("--num-beams", type=int, default=1, help="1 = greedy; more = beam search")
    caption.add_argument("--out", help="write JSONL here instead of stdout")
    return parser


def pick_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but CUDA is not available on this machine")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def plural(count: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


MAX_GRID_IMAGES = 1024  # a grid image of more would be too large to view


def run_generate(args: argparse.Namespace, model) -> str:
    from tqdm import tqdm

    from m2gan.atomic import staged_folder
    from m2gan.grid import prompt_grid
    from m2gan.outputs import write_images
    from m2gan.pipeline import MAX_SEED, finite_number, whole_number
    from m2gan.prompts import read_prompts

    prompts, skipped = list(args.prompt), 0
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"--prompt number {i + 1} is empty")
    if args.prompts_file:
        from_file, skipped = read_prompts(args.prompts_file)
        prompts += from_file
    if not prompts:
        raise ValueError("no prompts: give --prompt and/or --prompts-file")
    whole_number("--num-images", args.num_images, 1)
    whole_number("--seed", args.seed, 0, MAX_SEED)
    if args.truncation is not None:
        finite_number("--truncation", args.truncation, positive=True)
    total = len(prompts) * args.num_images
    if args.grid and total > MAX_GRID_IMAGES:
        raise ValueError(f"--grid: {total} images are too many for one grid image (at most {MAX_GRID_IMAGES})")
    if args.attention_maps and not model.has_word_attention:
        raise ValueError("--attention-maps: this model's generator has no word attention (model.generator.word_attention_sides)")
    if args.attention_maps and total > MAX_GRID_IMAGES:
        raise ValueError(f"--attention-maps: {total} images are too many to map (at most {MAX_GRID_IMAGES})")
    chunks = model.generate_chunks(prompts, args.num_images, args.seed, args.truncation, args.batch_size)
    kept = []
    with staged_folder(args.out) as folder, tqdm(total=total, unit="img", disable=total <= args.batch_size) as bar:
        row = 0
        for images in chunks:  # written as they come: memory holds one batch, not the whole job
            try:
                write_images(folder, images, row, prompts, args.num_images, args.seed, args.truncation)
            except OSError as error:
                raise ValueError(f"{args.out}: cannot write the images ({error.strerror or error})") from None
            kept += [images] if args.grid else []
            row += images.shape[0]
            bar.update(images.shape[0])
        if args.grid:
            images = torch.cat(kept)
            prompt_grid(images, prompts, scale=max(1, 128 // images.shape[-1])).save(folder / "grid.png")
        if args.attention_maps:
            write_attention_maps(folder, model, prompts, args)
    note = f" ({plural(skipped, 'blank line')} skipped)" if skipped else ""
    return f"wrote {plural(total, 'image')} for {plural(len(prompts), 'prompt')}{note} to {args.out}"


def write_attention_maps(folder: Path, model, prompts: list[str], args: argparse.Namespace) -> None:
    """``attention/<image name>.png`` for each generated image: the image, then each word's map per stage."""
    from m2gan.grid import attention_grid
    from m2gan.outputs import image_name

    (folder / "attention").mkdir()
    for row, record in enumerate(model.attention_maps(prompts, args.num_images, args.seed, args.truncation)):
        i, k = divmod(row, args.num_images)
        scale = max(1, 128 // record.image.shape[-1])
        grid = attention_grid(record.image, record.words, record.maps, scale)
        grid.save(folder / "attention" / image_name(i, k, len(prompts), args.num_images))


def run_interpolate(args: argparse.Namespace, model) -> str:
    from m2gan.atomic import staged_folder
    from m2gan.grid import prompt_grid
    from m2gan.outputs import save_images
    from m2gan.pipeline import finite_number

    prompts = list(args.prompt)
    if not prompts:
        raise ValueError("no prompts: give --prompt (one for a noise walk, several for a morph)")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"--prompt number {i + 1} is empty")
    finite_number("--fps", args.fps, positive=True)
    if args.truncation_sweep:
        if len(prompts) != 1:
            raise ValueError(f"--truncation-sweep draws one prompt, got {len(prompts)}")
        for psi in args.truncation_sweep:
            finite_number("--truncation-sweep value", psi, positive=True)
        images = model.truncation_sweep(prompts[0], args.truncation_sweep, seed=args.seed)
        values = [{"truncation": psi} for psi in args.truncation_sweep]
        label = f"{prompts[0]}: truncation {args.truncation_sweep[0]:g} .. {args.truncation_sweep[-1]:g}"
    else:
        images = model.interpolate(prompts, frames=args.frames, seed=args.seed, truncation=args.truncation)
        steps = torch.linspace(0, max(len(prompts) - 1, 1), images.shape[0]).tolist()
        values = [{"position": round(t, 6), "truncation": args.truncation} for t in steps]
        label = " -> ".join(prompts) if len(prompts) > 1 else f"{prompts[0]}: noise walk"
    entries = [
        {"file": f"frame_{k:03d}.png", "prompts": prompts, "seed": args.seed, **value} for k, value in enumerate(values)
    ]
    with staged_folder(args.out) as folder:
        try:
            save_images(folder, images, entries, "manifest.jsonl")
            frames = [Image.fromarray(frame) for frame in images.permute(0, 2, 3, 1).numpy()]
            scale = max(1, 128 // images.shape[-1])
            frames = [frame.resize((frame.width * scale, frame.height * scale), Image.NEAREST) for frame in frames]
            frames[0].save(
                folder / "interpolation.gif", save_all=True, append_images=frames[1:], duration=1000 / args.fps, loop=0
            )
            prompt_grid(images, [label], scale=scale).save(folder / "strip.png")
        except OSError as error:
            raise ValueError(f"{args.out}: cannot write the images ({error.strerror or error})") from None
    return f"wrote {plural(images.shape[0], 'frame')}, interpolation.gif and strip.png to {args.out}"


def image_files(inputs: list[str]) -> list[Path]:
    """Files named on the command line, and the image files (by suffix) of named folders, sorted."""
    files = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ValueError(f"{entry}: holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        elif entry.is_file():
            files.append(entry)
        else:
            raise ValueError(f"{entry}: no such file or folder")
    return files


def run_caption(args: argparse.Namespace, model) -> str:
    from m2gan.images import load_image

    files = image_files(args.images)
    if args.num_beams < 1:
        raise ValueError(f"--num-beams must be at least 1, got {args.num_beams}")
    # Read every image before captioning any, so a bad file fails the run before output is written.
    pixels = torch.stack([load_image(file, model.resolution) for file in files])
    captions = []
    for start in range(0, len(files), args.batch_size):
        captions += model.caption(pixels[start : start + args.batch_size], num_beams=args.num_beams)
    lines = [json.dumps({"file": str(file), "caption": caption}) for file, caption in zip(files, captions)]
    if args.out is None:
        print("\n".join(lines))
        return f"captioned {plural(len(files), 'image')}"
    from m2gan.atomic import atomic_path

    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise ValueError(f"--out {out}: exists; M2GAN never replaces a file: choose another name")
    try:
        with atomic_path(out) as partial:
            partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{out}: cannot write there ({error.strerror or error})") from None
    return f"captioned {plural(len(files), 'image')} into {out}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``m2gan-sample``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from m2gan.export import load

    # SIGTERM unwinds like Ctrl-C, so the staged output folder is removed instead of left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    with warnings.catch_warnings():
        # Warnings (unknown words, truncated prompts) are shown as one line each, without source lines.
        warnings.showwarning = lambda message, *rest, **kwargs: print(f"warning: {message}", file=sys.stderr)
        return _run(args, load)


def _run(args: argparse.Namespace, load) -> int:
    try:
        device = pick_device(args.device)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        model = load(args.checkpoint, map_location=device, ema=args.ema, text_encoder=args.text_encoder)
        run = {"generate": run_generate, "interpolate": run_interpolate, "caption": run_caption}[args.command]
        summary = run(args, model)
    except (ValueError, FileNotFoundError) as error:
        from m2gan.checkpoint_io import TextSourceError

        message = error.with_hint("--text-encoder FOLDER") if isinstance(error, TextSourceError) else error
        print(f"m2gan-sample: error: {message}", file=sys.stderr)
        return 1
    except OSError as error:  # any other file the run could not read or write
        print(f"m2gan-sample: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("m2gan-sample: interrupted; no output was written", file=sys.stderr)
        return 130
    print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
