"""Word-level caption tokenizer built from training captions with Hugging Face ``tokenizers``.

Captions are lower-cased, split into words and punctuation, wrapped in ``[BOS] … [EOS]`` and padded
with ``[PAD]`` to a fixed ``max_length``. Words never seen in training map to ``[UNK]``. The whole
tokenizer serialises to one JSON string, which M2GAN stores inside its checkpoints so that sampling
never needs the dataset.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))


class CaptionTokenizer:
    """Turns captions into fixed-length token id tensors and back.

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` whose vocabulary holds :data:`SPECIAL_TOKENS` at ids 0–3.
        max_length: Length of every encoded caption, ``[BOS]`` and ``[EOS]`` included.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [BOS], one word and [EOS]; got {max_length}")
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != expected_id:
                raise ValueError(f"tokenizer vocabulary must hold {token} at id {expected_id}")
        self._tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
        self._warned_truncation = False

    @classmethod
    def fit(cls, captions: Iterable[str], max_length: int = 24, min_frequency: int = 1) -> CaptionTokenizer:
        """Build the vocabulary from ``captions`` (the training split only)."""
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=min_frequency)
        tokenizer.train_from_iterator(captions, trainer=trainer)
        return cls(tokenizer, max_length)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return self._tokenizer.get_vocab_size()

    def vocabulary(self) -> list[str]:
        """Every token by id (the word of id ``i`` at ``i``), special tokens included."""
        return [self._tokenizer.id_to_token(i) for i in range(self.vocab_size)]

    def to_json(self) -> str:
        """Serialise vocabulary, normaliser and ``max_length`` to one JSON string."""
        return json.dumps({"tokenizer": self._tokenizer.to_str(), "max_length": self.max_length})

    @classmethod
    def from_json(cls, text: str) -> CaptionTokenizer:
        """Inverse of :meth:`to_json`.

        Raises:
            ValueError: ``text`` is not a tokenizer written by :meth:`to_json`.
        """
        try:
            data = json.loads(text)
            return cls(Tokenizer.from_str(data["tokenizer"]), int(data["max_length"]))
        except Exception as error:  # noqa: BLE001 - `tokenizers` raises plain Exception on bad input
            raise ValueError(f"not a tokenizer written by M2GAN ({type(error).__name__}: {error})") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CaptionTokenizer) and self.to_json() == other.to_json()

    def unknown_words(self, caption: str) -> list[str]:
        """Words of ``caption`` that are not in the vocabulary."""
        encoding = self._tokenizer.encode(caption)
        return [w for w, i in zip(self._normalised_words(caption), encoding.ids) if i == self.unk_id]

    def normalize(self, caption: str) -> str:
        """``caption`` as the tokenizer reads it: lower-cased words and punctuation, single spaces.

        :meth:`decode` returns this form, so reference captions normalised here compare with
        decoded captions word for word (e.g. in BLEU).
        """
        return " ".join(self._normalised_words(caption))

    def _normalised_words(self, caption: str) -> list[str]:
        normalised = self._tokenizer.normalizer.normalize_str(caption)
        return [w for w, _ in self._tokenizer.pre_tokenizer.pre_tokenize_str(normalised)]

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Encode a batch of captions to a ``(B, max_length)`` long tensor.

        Captions longer than ``max_length - 2`` words are truncated (a warning is issued once per
        tokenizer). Empty captions encode to ``[BOS] [EOS]``.
        """
        if isinstance(captions, str):
            raise TypeError("encode takes a sequence of captions, not a single string")
        rows = []
        # One caption at a time on purpose: ``encode_batch`` hands short captions to a rayon thread
        # pool whose threads keep spinning on the cores after the call and slow the torch ops that
        # follow: measured before a batch-64 generator pass, 64 prompts cost ~4 ms that way and ~1.4 ms
        # one by one on the calling thread.
        for caption in captions:
            ids = self._tokenizer.encode(caption).ids
            if len(ids) > self.max_length - 2:
                if not self._warned_truncation:
                    warnings.warn(
                        f"caption of {len(ids)} words truncated to max_length={self.max_length} tokens "
                        "([BOS] and [EOS] included); this warning is shown once",
                        stacklevel=2,
                    )
                    self._warned_truncation = True
                ids = ids[: self.max_length - 2]
            row = [self.bos_id, *ids, self.eos_id]
            rows.append(row + [self.pad_id] * (self.max_length - len(row)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.max_length)

    def words(self, ids: Sequence[int]) -> list[str]:
        """The token of each id, special tokens included (``[PAD]``, ``[UNK]``, …)."""
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Decode one row of token ids, stopping at ``[EOS]`` and dropping special tokens."""
        words = []
        for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self._tokenizer.id_to_token(int(i)))
        return " ".join(words)
