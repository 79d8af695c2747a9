"""Corpus BLEU: hand-computed values, and agreement with sacrebleu under the same conventions."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from m2gan.eval.bleu import corpus_bleu

CORPORA = {
    "multi-reference": (
        ["a small red circle in the top left", "there is a big blue square on the right"],
        [
            ["a small red circle at the upper left", "a little red disc in the top left", "a red circle"],
            ["a big blue box on the right", "there is a large blue square at the right side"],
        ],
    ),
    "no 4-gram match": (["red circle left top", "blue square"], [["red circle top left"], ["blue square here"]]),
    # The candidate (5 words) is as far from a 4- as from a 6-word reference: the shorter one counts.
    "length tie": (["a red circle on left"], [["a red circle on the left", "a red circle left"]]),
    "single": (["a green cross at the bottom"], [["a green cross at the bottom centre"]]),
}


def sacrebleu_n(hypotheses, references, n):
    # sacrebleu takes reference *streams*: the k-th reference of every sentence; pad short lists.
    depth = max(len(r) for r in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(depth)]
    bleu = sacrebleu.metrics.BLEU(tokenize="none", smooth_method="none", max_ngram_order=n, effective_order=False)
    return bleu.corpus_score(hypotheses, streams).score / 100


@pytest.mark.parametrize("name", list(CORPORA))
def test_agrees_with_sacrebleu(name):
    hypotheses, references = CORPORA[name]
    ours = corpus_bleu(hypotheses, references)
    for n in range(1, 5):
        assert ours[f"bleu{n}"] == pytest.approx(sacrebleu_n(hypotheses, references, n), abs=1e-6)


def test_hand_computed_values():
    # All n-grams of "the cat sat" match; brevity penalty exp(1 - 6/3).
    scores = corpus_bleu(["the cat sat"], [["the cat sat on the mat"]], max_order=3)
    assert scores["bleu3"] == pytest.approx(math.exp(-1), abs=1e-6)
    assert corpus_bleu(["a b c d"], [["x y", "a b c d"]])["bleu4"] == pytest.approx(1.0)
    # No 4-gram in common: BLEU-4 is 0 (unsmoothed); all 6 words match, brevity penalty exp(1 - 7/6).
    scores = corpus_bleu(*CORPORA["no 4-gram match"])
    assert scores["bleu4"] == 0.0 and scores["bleu1"] == pytest.approx(math.exp(1 - 7 / 6), abs=1e-6)


def test_bad_corpora_are_refused():
    with pytest.raises(ValueError, match="reference sets"):
        corpus_bleu(["a"], [])
    with pytest.raises(ValueError, match="at least one reference"):
        corpus_bleu(["a"], [[]])
