"""Caption metrics: corpus BLEU-1 … BLEU-4 with stated conventions.

Conventions (those of Papineni et al. 2002 and of ``sacrebleu.corpus_bleu(..., tokenize="none",
smooth_method="none")``, which the tests check agreement with):

* Tokens are whitespace-separated words of already-normalised captions (see
  :meth:`m2gan.tokenizer.CaptionTokenizer.normalize`); no further tokenisation, no lower-casing.
* Corpus level: n-gram matches (clipped by the largest count in any one reference) and candidate
  n-gram counts are summed over the corpus before dividing.
* BLEU-n is the geometric mean of the 1- … n-gram precisions with uniform weights, times the
  brevity penalty — the cumulative BLEU-n of captioning papers (coco-caption's ``Bleu_n``).
* No smoothing: a corpus with no matching n-gram of some order up to n scores 0.
* Reference length per candidate: the reference length closest to the candidate's, ties going to
  the shorter. (torchmetrics takes the first closest reference in list order, so references are
  sorted by length before they reach it.)
"""

from __future__ import annotations

from collections.abc import Sequence

from torchmetrics.functional.text import bleu_score


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 4) -> dict[str, float]:
    """Corpus BLEU-1 … BLEU-``max_order`` of ``hypotheses`` against their ``references``.

    Args:
        hypotheses: One candidate caption per image.
        references: For each image, one or more reference captions.
        max_order: Highest n-gram order.

    Returns:
        ``{"bleu1": …, …, "bleu{max_order}": …}``, each in [0, 1].
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    if not hypotheses:
        raise ValueError("BLEU of an empty corpus is undefined")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every hypothesis needs at least one reference caption")
    by_length = [sorted(refs, key=lambda ref: len(ref.split())) for refs in references]
    return {
        f"bleu{n}": float(bleu_score(list(hypotheses), by_length, n_gram=n, smooth=False))
        for n in range(1, max_order + 1)
    }
