"""How fast does sampling run? Throughput against the bare generator, and cold-start time.

1. Throughput: images/s of ``model.generate`` (tokenising, text encoder, noise, generator, uint8
   conversion) at batch 64, as a ratio to (a) the bare EMA generator forward pass on the same
   noise and sentence vectors and (b) the text encoder + generator forward from token ids — the
   wrapper's own overhead. ``generate`` runs twice: with 64 distinct prompts (the worst case:
   every image needs its own text work) and with 64 / ``--images-per-prompt`` prompts drawn
   ``--images-per-prompt`` times each (``m2gan-sample --num-images``). All are timed in turn within
   each repeat, in this run (median of ``--repeats`` calls after a warm-up). The text side is
   also timed alone (tokenising the distinct prompts; the text encoder on their token ids): it
   bounds what ``generate`` can reach against the bare generator when every image has its own
   prompt.
2. Cold start: a fresh Python process imports M2GAN, loads a checkpoint and draws one image; the
   whole process's wall time, the import part, and the load + first-image part alone.

    python benchmarks/sampling_speed.py                   # default model config, random weights
    python benchmarks/sampling_speed.py --config configs/sizes/gpu-64px.yaml   # that size's model, random weights
    python benchmarks/sampling_speed.py --ckpt runs/m2gan/<run>/checkpoints/last.ckpt
    python benchmarks/sampling_speed.py --quick

Without ``--ckpt`` the model is trained for one batch through ``train.py``'s CLI on the built-in
shapes data, whatever data ``--config`` names: timing depends on the networks' sizes, not on the
weights or the vocabulary, and no dataset needs to be on disk.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import interleaved_medians  # benchmarks/timing.py

from m2gan.data.shapes import ShapesDataset
from m2gan.tokenizer import PAD_ID

ROOT = Path(__file__).resolve().parent.parent

COLD_START = """
import sys, time
start = time.perf_counter()
import m2gan, m2gan.export  # m2gan.export pulls in torch and the networks (and Lightning, for the settings)
imported = time.perf_counter()
model = m2gan.load(sys.argv[1])
model.generate(["a large red circle in the top left"])
print(imported - start, time.perf_counter() - imported)
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a checkpoint to sample from (default: a config's model, untrained)")
    parser.add_argument("--config", help="a config merged over configs/default.yaml, as train.py does (with no --ckpt)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images-per-prompt", type=int, default=4, help="images per prompt of the second case")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per measurement")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, a smoke run")
    return parser.parse_args()


def untrained_checkpoint(folder: str, config: str | None) -> str:
    """A checkpoint of a config's model after one batch (untrained weights time the same as trained ones)."""
    from train import cli

    os.environ.setdefault("WANDB_MODE", "offline")
    # The real-data configs fit their vocabulary on all training captions: for shapes, the default's 2,000.
    cli(
        ["fit", *([f"--config={config}"] if config else []), "--data.format=shapes",
         "--data.tokenizer_fit_size=2000", "--trainer.max_steps=2", f"--trainer.logger.init_args.save_dir={folder}",
         "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0"],
    )  # fmt: skip
    return str(next(Path(folder).glob("m2gan/*/checkpoints/last.ckpt")))


def main() -> None:
    args = parse_args()
    if args.ckpt and args.config:
        raise SystemExit("--config sizes an untrained model; a --ckpt brings its own")
    repeats = 3 if args.quick else args.repeats
    import m2gan

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.ckpt or untrained_checkpoint(tmp, args.config)
        model = m2gan.load(checkpoint)
        n = args.batch_size
        # Distinct prompts (held-out shapes captions): no text work is shared between rows.
        test = ShapesDataset("test", n, model.resolution)
        prompts = [test.caption(i) for i in range(n)]
        tokens = model.encode_prompts(prompts)
        # A prompt with unknown words sends generate down its slower warning path: say so beside the figures.
        with_unknown_words = int((tokens == model.tokenizer.unk_id).any(dim=1).sum())
        padding = tokens == PAD_ID
        with torch.inference_mode():
            words, sentence = model.text_encoder(tokens)
            z = model.noise(n, torch.Generator().manual_seed(0))

        def generator_only() -> None:
            with torch.inference_mode():
                model.generator(z, sentence, words, padding)

        def networks() -> None:  # every network a prompt passes through, from token ids
            with torch.inference_mode():
                encoded_words, encoded_sentence = model.text_encoder(tokens)
                model.generator(z, encoded_sentence, encoded_words, padding)

        def tokenize() -> None:
            model.encode_prompts(prompts)

        def text_encoder_only() -> None:
            with torch.inference_mode():
                model.text_encoder(tokens)

        def generate() -> None:
            model.generate(prompts, num_images=1, seed=0, batch_size=n)

        per_prompt = args.images_per_prompt
        if n % per_prompt:
            raise SystemExit(f"--images-per-prompt {per_prompt} does not divide the batch size {n}")

        def generate_repeated() -> None:
            model.generate(prompts[: n // per_prompt], num_images=per_prompt, seed=0, batch_size=n)

        functions = [generator_only, networks, generate, generate_repeated, tokenize, text_encoder_only]
        bare, both, full, repeated, tokenizing, encoding = (m for m, _ in interleaved_medians(functions, repeats))

        cold_start = [sys.executable, "-c", COLD_START, checkpoint]
        if not args.quick:
            subprocess.run(cold_start, capture_output=True, check=True)  # warms the OS file cache
        start = time.perf_counter()
        cold = subprocess.run(cold_start, capture_output=True, text=True, check=True).stdout.split()
        process_total = time.perf_counter() - start
        import_seconds, load_and_first = map(float, cold)  # of the timed process itself

    source = args.ckpt or f"{args.config or 'configs/default.yaml'} (untrained)"
    generator_parameters = sum(p.numel() for p in model.generator.parameters()) / 1e6
    print(f"\nsampling_speed: {torch.get_num_threads()} threads, {os.cpu_count()} cores, batch {n}, "
          f"median of {repeats}; model {source}: resolution {model.resolution}, "
          f"generator {generator_parameters:.2f} M parameters")  # fmt: skip
    if with_unknown_words:
        print(f"note: {with_unknown_words} of the {n} prompts hold words outside this model's vocabulary")
    print(f"bare EMA generator forward:            {n / bare:6.0f} images/s")
    print(f"text encoder + generator from tokens:  {n / both:6.0f} images/s")
    print(f"model.generate, {n} distinct prompts:    {n / full:6.0f} images/s   "
          f"ratio {bare / full:.2f}x of the bare forward, {both / full:.2f}x of the networks")  # fmt: skip
    print(f"model.generate, {n // per_prompt} prompts x {per_prompt} images: {n / repeated:6.0f} images/s   "
          f"ratio {bare / repeated:.2f}x of the bare forward")  # fmt: skip
    print(f"text side for {n} prompts: tokenising {tokenizing * 1e3:.2f} ms, text encoder {encoding * 1e3:.2f} ms, "
          f"against {bare * 1e3:.2f} ms of generator; with no wrapper cost at all, distinct prompts would reach "
          f"{bare / (bare + tokenizing + encoding):.2f}x of the bare forward")  # fmt: skip
    print(f"cold start: load + first image {load_and_first:.2f} s; whole process {process_total:.2f} s "
          f"(of which imports {import_seconds:.2f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
