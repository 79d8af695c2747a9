"""What a pretrained text encoder costs per training batch, and what caching its features could save.

The default job's model and data (``configs/default.yaml``: 32 px, batch 16) with

* ``built-in``: today's encoder (the GRU);
* ``clip-tiny``: a CLIP text tower 32 wide, 2 layers (the tests' size);
* ``clip-base``: CLIP ViT-B/32's text tower sizes (512 wide, 12 layers, 8 heads);
* ``t5-base``: T5-base's encoder sizes (768 wide, 12 layers, 12 heads),

each frozen (``model.text_encoder`` as it comes) and, with ``--trainable``, also fine-tuned.
Weights are random and the tokenizers small (``m2gan.pretrained.write_random_text_model``):
the cost of a forward pass does not depend on the weights' values, and a real tokenizer's larger
vocabulary changes only the embedding table's size, not the work per token.

For each variant it prints the median seconds of one training batch (discriminator step,
generator step, EMA; ``benchmarks/plain_loop.py``'s loop over the model's own objective), the
ratio to the built-in encoder measured in the same run (the variants interleaved, so machine drift
hits all alike), and the seconds of the text encoder's frozen forward passes within one batch
(the D step encodes the captions and their swapped negatives): the most that caching frozen
features per caption could save. How much a per-caption cache would actually hit, it counts over
the default job's training epoch: the share of captions, and of swapped negatives, already seen.

    python benchmarks/text_encoders.py              # frozen variants, 20 rounds
    python benchmarks/text_encoders.py --trainable --repeats 10
    python benchmarks/text_encoders.py --quick      # a smoke run
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from plain_loop import PlainStep, default_parts, take_batches  # benchmarks/plain_loop.py
from timing import interleaved_medians  # benchmarks/timing.py

from m2gan.negatives import hard_negatives
from m2gan.pretrained import write_random_text_model
from m2gan.tokenizer import SPECIAL_TOKENS

SIZES = {  # kind, hidden, layers, heads
    "clip-tiny": ("clip", 32, 2, 4),
    "clip-base": ("clip", 512, 12, 8),
    "t5-base": ("t5", 768, 12, 12),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (each times every variant once)")
    parser.add_argument("--trainable", action="store_true", help="also time fine-tuned variants")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="the tiny model only, 2 rounds: a smoke run")
    args = parser.parse_args()
    sizes = {"clip-tiny": SIZES["clip-tiny"]} if args.quick else SIZES
    repeats = 2 if args.quick else args.repeats
    if args.threads:
        torch.set_num_threads(args.threads)
    datamodule, make_model = default_parts()
    words = datamodule.tokenizer.vocabulary()[len(SPECIAL_TOKENS) :]
    batches = take_batches(datamodule, 4)
    with tempfile.TemporaryDirectory() as root:
        variants = {"built-in": make_model(0)}
        for name, (kind, hidden, layers, heads) in sizes.items():
            folder = write_random_text_model(Path(root) / name, kind, words, hidden, layers, heads)
            variants[name] = make_model(0, text_encoder=str(folder))
            if args.trainable:
                variants[f"{name} trained"] = make_model(0, text_encoder=str(folder), text_encoder_trainable=True)
        # What the D step encodes: the captions and their swapped negatives (the default has swaps on).
        tokens = batches[0]["tokens"]
        texts = torch.cat([tokens, hard_negatives(tokens, len(SPECIAL_TOKENS), 0.0, None, None)])
        steps, encodes = [], []
        for model in variants.values():
            step, turn = PlainStep(model.train()), iter(range(10**9))
            steps.append(lambda step=step, turn=turn: step(batches[next(turn) % len(batches)], penalty=False))
            encodes.append(lambda model=model: encode(model, texts))
        step_times = interleaved_medians(steps, repeats)
        encode_times = interleaved_medians(encodes, repeats)
    caption_hits, negative_hits, distinct = cache_hits(datamodule, 20 if args.quick else None)
    baseline = step_times[0][0]
    print(
        f"\ntext_encoders: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
        f"batch {batches[0]['image'].shape[0]}, median of {repeats} interleaved rounds"
    )
    print(f"{'variant':<20} {'batch s':>9} {'x built-in':>11} {'text forward s':>15} {'share':>7}")
    for name, (step_s, _), (encode_s, _) in zip(variants, step_times, encode_times):
        print(f"{name:<20} {step_s:9.4f} {step_s / baseline:11.2f} {encode_s:15.4f} {encode_s / step_s:7.1%}")
    print(
        f"a per-caption cache over the training epoch would hit {caption_hits:.1%} of the captions and "
        f"{negative_hits:.1%} of the swapped negatives ({distinct} distinct texts to keep)"
    )


def cache_hits(datamodule, batches: int | None) -> tuple[float, float, int]:
    """Shares of captions and of swapped negatives seen before in the training epoch, and the distinct texts."""
    seen: set[tuple[int, ...]] = set()
    hits, total = [0, 0], [0, 0]
    for index, batch in enumerate(datamodule.train_dataloader()):
        if batches is not None and index == batches:
            break
        tokens = batch["tokens"]
        for kind, rows in enumerate((tokens, hard_negatives(tokens, len(SPECIAL_TOKENS)))):
            for row in map(tuple, rows.tolist()):
                hits[kind] += row in seen
                total[kind] += 1
                seen.add(row)
    return hits[0] / total[0], hits[1] / total[1], len(seen)


@torch.no_grad()
def encode(model, texts: torch.Tensor) -> None:
    """The text encoder's forward pass, without gradients (a frozen model's part of a batch)."""
    model.text_encoder(texts)


if __name__ == "__main__":
    main()
