"""Does the generator draw two shapes apart once its critic is shown them apart? (issue 37: a diagnostic)

``train.py fit`` with one change: every caption that names word A or word B gets, as the critic's
swapped caption (its one-word hard negative), the same caption with A and B exchanged ("a red
*circle* …" -> "a red *square* …"), instead of a random swap. A random swap names the other word
of a confusable pair for about one caption in two hundred; here every caption that names either
word is asked about the pair (the words themselves, not their synonyms: 29% of the default job's
captions for circle and square). This knows which words matter, so it is a probe, not a method: if
the critic learns the pair this way and the drawings still confuse it, the generator is what
loses the signal; if the drawings follow, what limits shape is how often the critic is asked.

Read the finished run with ``shape_probe.py`` (confusion matrix, the critic's reading per pair).

    python benchmarks/focus_train.py circle,square -- --seed_everything 0
    python benchmarks/shape_probe.py runs/m2gan/<run>/checkpoints/last.ckpt --seed 0
    python benchmarks/focus_train.py --quick      # a smoke run: 2 batches, no validation
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # train.py, run from anywhere

import train  # noqa: E402
from m2gan import objective  # noqa: E402
from m2gan.model import M2GAN  # noqa: E402


def exchange(tokens: torch.Tensor, swapped: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """``swapped`` (B, L), with every row of ``tokens`` (B, L) that holds id ``a`` or ``b`` replaced by
    that row with the two ids exchanged."""
    named = ((tokens == a) | (tokens == b)).any(1, keepdim=True)
    return torch.where(named, torch.where(tokens == a, b, torch.where(tokens == b, a, tokens)), swapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="?", default="circle,square", help="the two words, A,B")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 batches, no validation")
    args, train_args = parser.parse_known_args()
    train_args = [a for a in train_args if a != "--"]
    if args.quick:
        train_args += ["--trainer.max_steps=4", "--trainer.limit_val_batches=0", "--data.train_size=64",
                       "--data.val_size=16", "--trainer.enable_progress_bar=false"]  # fmt: skip
        os.environ.setdefault("WANDB_MODE", "offline")
    words = args.words.split(",")
    if len(words) != 2 or not all(words):
        raise SystemExit(f"focus_train.py: give two words as A,B, got {args.words!r}")
    pair, counts = {}, {"exchanged": 0, "swapped": 0}

    set_tokenizer = M2GAN.set_tokenizer

    def remember_pair(self, tokenizer):
        set_tokenizer(self, tokenizer)
        ids = tokenizer.encode([" ".join(words)])[0, 1:3].tolist()
        unknown = [w for w, token in zip(words, tokenizer.words(ids)) if token != w]
        if unknown:
            raise SystemExit(f"focus_train.py: {', '.join(unknown)} not in the training captions' vocabulary")
        pair["ids"] = ids

    hard_negatives = objective.hard_negatives

    def focused(tokens, *more, **named):
        swapped = exchange(tokens, hard_negatives(tokens, *more, **named), *pair["ids"])
        counts["exchanged"] += int(torch.isin(tokens, torch.tensor(pair["ids"], device=tokens.device)).any(1).sum())
        counts["swapped"] += len(tokens)
        return swapped

    M2GAN.set_tokenizer, objective.hard_negatives = remember_pair, focused
    try:
        train.cli(["fit", *train_args])
    finally:
        M2GAN.set_tokenizer, objective.hard_negatives = set_tokenizer, hard_negatives
    print(f"\nfocus_train: {torch.get_num_threads()} threads, {os.cpu_count()} cores; {' / '.join(words)} exchanged "
          f"in {counts['exchanged']:,} of {counts['swapped']:,} swapped captions")  # fmt: skip
    if counts["exchanged"] == 0:
        raise SystemExit(f"focus_train.py: no caption named {' or '.join(words)}: nothing was probed")


if __name__ == "__main__":
    main()
