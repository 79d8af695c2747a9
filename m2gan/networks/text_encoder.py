"""Text encoder: token ids -> per-word features and one sentence vector.

Learned word embeddings, contextualised by either

* a bidirectional GRU (``"gru"``, AttnGAN's DAMSM encoder is its LSTM sibling): each word's feature
  reads everything before it and everything after it, in order; or
* a small pre-norm transformer over word plus position embeddings (``"transformer"``).

The sentence vector is the mean of the word features over non-padding positions, projected to
``sentence_dim``.

A mean is a bag of words unless each word's feature says which object it belongs to and what is
said of that object. Telling "a red circle left of a blue square" from "a blue circle left of a red
square" against an image scored by a dot product (the projection discriminator) needs a sentence
vector in which each colour is signed by its side of the relation word: a product of the words'
order and the relation, not a sum of words. The recurrent encoder's running, gated state forms it;
the transformer, whose attention only mixes words by absolute positions that shift with the caption's
template, did not learn it from the discriminator's losses, even with position embeddings at the word
embeddings' scale (at ``position_std`` 0.02 it was blind to order altogether).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

TextArchitecture = Literal["gru", "transformer"]


class TextEncoder(nn.Module):
    """Encode captions for conditioning.

    Args:
        vocab_size: Number of token ids.
        max_length: Longest token sequence.
        width: Width of word embeddings and word features.
        sentence_dim: Width of the sentence vector.
        num_layers: GRU or transformer layers.
        num_heads: Attention heads per transformer layer; must divide ``width``.
        pad_id: Token id of padding, left out of the context and the pooling.
        position_std: Standard deviation of the transformer's initial position embeddings (the
            word embeddings' is 1); small values make the sentence vector nearly blind to word order.
        architecture: ``"gru"`` (bidirectional; ``width`` must be even) or ``"transformer"``.
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        width: int = 64,
        sentence_dim: int = 64,
        num_layers: int = 1,
        num_heads: int = 4,
        pad_id: int = 0,
        position_std: float = 1.0,
        architecture: TextArchitecture = "gru",
    ) -> None:
        super().__init__()
        if architecture not in ("gru", "transformer"):
            raise ValueError(f"text architecture must be 'gru' or 'transformer', got {architecture!r}")
        self.pad_id, self.max_length, self.architecture = pad_id, max_length, architecture
        self.token_embedding = nn.Embedding(vocab_size, width)
        if architecture == "gru":
            if width % 2:
                raise ValueError(f"text width {width} must be even for the bidirectional GRU (half per direction)")
            self.rnn = nn.GRU(width, width // 2, num_layers, batch_first=True, bidirectional=True)
        else:
            if width % num_heads:
                raise ValueError(f"text width {width} is not divisible by num_heads {num_heads}")
            self.position_embedding = nn.Parameter(torch.zeros(max_length, width))
            nn.init.normal_(self.position_embedding, std=position_std)
            layer = nn.TransformerEncoderLayer(
                width, num_heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.to_sentence = nn.Linear(width, sentence_dim)

    def set_vocabulary(self, words: list[str]) -> None:
        """Nothing to do: this encoder learns its own embedding of each word id (a pretrained one looks words up)."""

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode token ids (B, L) long, or token distributions (B, L, vocab) float.

        A distribution row embeds as the probability-weighted mean of word embeddings, so one-hot
        rows give exactly the embedding of their token; this soft path lets a loss on the text
        encoder's output reach a captioner's relaxed (e.g. straight-through) token choices. A
        position whose most likely token is ``[PAD]`` counts as padding.

        Returns:
            words: (B, L, width) per-token features (padding positions are not meaningful).
            sentence: (B, sentence_dim) sentence vector.
        """
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"token sequence of length {tokens.shape[1]} exceeds max_length {self.max_length}")
        if tokens.is_floating_point():
            padding = tokens.argmax(-1) == self.pad_id  # (B, L), True where ignored
            embedded = tokens.to(self.token_embedding.weight.dtype) @ self.token_embedding.weight  # (B, L, W)
        else:
            padding = tokens == self.pad_id
            embedded = self.token_embedding(tokens)
        if self.architecture == "gru":
            words = self.norm(self._recurrent(embedded, padding))
        else:
            x = embedded + self.position_embedding[: tokens.shape[1]]  # (B, L, W)
            words = self.norm(self.transformer(x, src_key_padding_mask=padding))
        keep = (~padding).unsqueeze(-1).to(words.dtype)  # (B, L, 1)
        pooled = (words * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # (B, W)
        return words, self.to_sentence(pooled)

    def _recurrent(self, embedded: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Bidirectional GRU features (B, L, W) of embedded words (B, L, W), each row read up to its last word."""
        length = embedded.shape[1]
        trailing = padding.flip(1).long().cumprod(1).sum(1)  # (B,) padding positions after the last word
        lengths = (length - trailing).clamp_min(1).cpu()
        # In float32 whatever the autocast: a recurrence compounds rounding at every word.
        with torch.autocast(embedded.device.type, enabled=False):
            packed = nn.utils.rnn.pack_padded_sequence(
                embedded.float(), lengths, batch_first=True, enforce_sorted=False
            )
            output, _ = self.rnn(packed)
            words, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=length)
        return words.to(embedded.dtype)
