"""Text encoder: token ids -> per-word features and one sentence vector.

A small pre-norm transformer over learned word and position embeddings. The sentence vector is the
mean of the word features over non-padding positions, projected to ``sentence_dim``.

A mean is a bag of words unless the word features carry their positions. With position embeddings
far smaller than the word embeddings (std 0.02 beside ``nn.Embedding``'s 1) the trained encoder gave
"a red circle left of a blue square" and "a blue circle left of a red square" the same sentence
vector, so no network downstream could tell them apart. Both tables therefore start at the same scale.
"""

from __future__ import annotations

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Encode captions for conditioning.

    Args:
        vocab_size: Number of token ids.
        max_length: Longest token sequence (sets the position table).
        width: Width of word embeddings and transformer layers.
        sentence_dim: Width of the sentence vector.
        num_layers: Transformer encoder layers.
        num_heads: Attention heads per layer; must divide ``width``.
        pad_id: Token id of padding, masked out of attention and pooling.
        position_std: Standard deviation of the initial position embeddings (the word embeddings'
            is 1); small values make the sentence vector nearly blind to word order.
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
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"text width {width} is not divisible by num_heads {num_heads}")
        self.pad_id = pad_id
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, width))
        nn.init.normal_(self.position_embedding, std=position_std)
        layer = nn.TransformerEncoderLayer(
            width, num_heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.to_sentence = nn.Linear(width, sentence_dim)

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
        if tokens.shape[1] > self.position_embedding.shape[0]:
            raise ValueError(
                f"token sequence of length {tokens.shape[1]} exceeds max_length {self.position_embedding.shape[0]}"
            )
        if tokens.is_floating_point():
            padding = tokens.argmax(-1) == self.pad_id  # (B, L), True where ignored
            embedded = tokens.to(self.token_embedding.weight.dtype) @ self.token_embedding.weight  # (B, L, W)
        else:
            padding = tokens == self.pad_id
            embedded = self.token_embedding(tokens)
        x = embedded + self.position_embedding[: tokens.shape[1]]  # (B, L, W)
        words = self.norm(self.transformer(x, src_key_padding_mask=padding))
        keep = (~padding).unsqueeze(-1).to(words.dtype)  # (B, L, 1)
        pooled = (words * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # (B, W)
        return words, self.to_sentence(pooled)
