"""Pretrained text encoder: caption word ids -> a transformers model's features, projected to M2GAN's sizes.

The same contract as :class:`~m2gan.networks.text_encoder.TextEncoder`: token ids of the caption
vocabulary (B, L) in, per-word features (B, L, width) and a sentence vector (B, sentence_dim) out,
so negatives, binding twins and word attention work on word ids unchanged. Inside, each word is
read as the pretrained model's own tokenizer splits it:

1. every vocabulary word's sub-word pieces are looked up once (``set_vocabulary``), ``[BOS]`` and
   ``[EOS]`` become the model's own opening and closing special tokens (``<|startoftext|>`` /
   ``<|endoftext|>``, ``[CLS]`` / ``[SEP]``, T5's ``</s>``);
2. a batch's pieces are gathered and packed to the left: (B, T) model token ids and a mask;
3. the model reads them; each word's feature is the mean of its pieces' features;
4. the sentence vector is read where the model puts it: CLIP's causal text tower at the closing
   token (its ``pooler_output``), bidirectional encoders (T5, BERT) as the mean over the pieces.

Frozen (the default), the model sits outside this module's parameters and state dict: checkpoints
hold only the projections and the SHA-256 of the folder the model came from (``source_digest``),
copies (the EMA pipeline's) share it, and it runs under ``torch.no_grad``. Trained, it is an
ordinary submodule (``backbone``) saved with the rest.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class TextSourceMismatch(ValueError):
    """Weights trained with another pretrained text model than the one this encoder was read from."""


class Shared:
    """Holds an object outside a module's parameters and state dict, shared (not copied) by ``copy.deepcopy``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict) -> Shared:
        return self


class PretrainedTextEncoder(nn.Module):
    """Encode captions with a pretrained transformers text model.

    Args:
        backbone: The transformers model (CLIP text tower, T5 encoder, BERT-style encoder).
        tokenizer: Its tokenizer (a transformers fast tokenizer).
        kind: ``"clip"`` (sentence at the closing token), ``"t5"`` or ``"bert"`` (mean over tokens).
        digest: SHA-256 of the folder the model was read from (32 bytes).
        max_length: Longest caption in word ids, ``[BOS]`` and ``[EOS]`` included.
        width: Width of the per-word features.
        sentence_dim: Width of the sentence vector.
        special_ids: Word ids of ``[PAD]``, ``[UNK]``, ``[BOS]`` and ``[EOS]`` in the caption vocabulary.
        trainable: Fine-tune the backbone (saved in checkpoints) instead of keeping it frozen (not saved).
        folder: Where the model was read from, for messages.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        kind: str,
        digest: bytes,
        max_length: int,
        width: int,
        sentence_dim: int,
        special_ids: tuple[int, int, int, int],
        trainable: bool = False,
        folder: str = "",
    ) -> None:
        super().__init__()
        self.kind, self.max_length, self.folder = kind, max_length, folder
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = special_ids
        self.trainable = trainable
        self._warned_cut = False
        if trainable:
            self.backbone = backbone.train()  # read in eval mode; from here on it follows this module's mode
        else:
            self._frozen = Shared(backbone.eval().requires_grad_(False))
        self._tokenizer = Shared(tokenizer)
        hidden = int(backbone.config.hidden_size)
        self.max_positions: int | None = getattr(backbone.config, "max_position_embeddings", None)
        self.to_words = nn.Linear(hidden, width)
        self.norm = nn.LayerNorm(width)
        self.to_sentence = nn.Linear(hidden, sentence_dim)
        self.register_buffer("source_digest", torch.tensor(list(digest), dtype=torch.uint8))
        # (vocab, pieces) model token ids of each caption-vocabulary word, -1 past its last piece.
        self.register_buffer("pieces", torch.empty(0, 0, dtype=torch.long), persistent=False)

    @property
    def model(self) -> nn.Module:
        """The pretrained model, frozen or trained."""
        return self.backbone if self.trainable else self._frozen.value

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        # Device moves and casts reach the frozen model too, though it is no submodule.
        if not self.trainable:
            self._frozen.value._apply(fn, recurse)
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------------ vocabulary

    def set_vocabulary(self, words: Sequence[str]) -> None:
        """Look up the model's pieces of every caption-vocabulary word (``words[i]`` is word id ``i``)."""
        tokenizer = self._tokenizer.value
        probe = tokenizer([["a"]], is_split_into_words=True)
        ids, owners = probe["input_ids"][0], probe.word_ids(0)
        word_positions = [i for i, owner in enumerate(owners) if owner is not None]
        prefix, suffix = ids[: word_positions[0]], ids[word_positions[-1] + 1 :]
        rows = tokenizer([[word] for word in words], is_split_into_words=True, add_special_tokens=False)["input_ids"]
        unknown = tokenizer.unk_token_id
        own_specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
        rows[self.pad_id] = []
        rows[self.bos_id], rows[self.eos_id] = list(prefix), list(suffix)
        # [UNK] reads as the model's unknown token, unless that doubles as its end (CLIP's does).
        rows[self.unk_id] = [unknown] if unknown is not None and unknown not in own_specials else []
        longest = max(len(row) for row in rows)
        pieces = torch.full((len(rows), max(longest, 1)), -1, dtype=torch.long)
        for i, row in enumerate(rows):
            pieces[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        self.pieces = pieces.to(self.source_digest.device)

    # ------------------------------------------------------------------ encoding

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode caption word ids (B, L) long.

        Returns:
            words: (B, L, width) per-word features (padding positions are not meaningful).
            sentence: (B, sentence_dim) sentence vector.
        """
        if tokens.is_floating_point():
            raise ValueError(
                "a pretrained text encoder reads word ids, not token distributions: "
                "model.objective.caption_adversarial_weight needs the built-in text encoder"
            )
        if self.pieces.numel() == 0:
            raise RuntimeError("the pretrained text encoder has no caption vocabulary yet: call set_vocabulary()")
        ids, mask, owner = self._model_tokens(tokens)  # (B, T) each
        if self.trainable:
            hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, T, H)
        else:
            with torch.no_grad():
                hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        hidden = hidden * mask.unsqueeze(-1)  # padding contributes nothing below
        batch, length = tokens.shape
        # Each word's feature: the mean of its pieces' features (zero for a word without pieces).
        index = owner.unsqueeze(-1).expand_as(hidden)  # (B, T, H)
        sums = hidden.new_zeros(batch, length, hidden.shape[-1]).scatter_add_(1, index, hidden)  # (B, L, H)
        counts = mask.to(hidden.dtype).new_zeros(batch, length).scatter_add_(1, owner, mask.to(hidden.dtype))
        word_features = sums / counts.clamp_min(1).unsqueeze(-1)  # (B, L, H)
        if self.kind == "clip":  # causal: only the closing token has read the whole caption
            last = mask.long().sum(1) - 1  # (B,)
            pooled = hidden[torch.arange(batch, device=hidden.device), last]  # (B, H)
        else:
            pooled = hidden.sum(1) / mask.sum(1, keepdim=True).clamp_min(1).to(hidden.dtype)  # (B, H)
        return self.norm(self.to_words(word_features)), self.to_sentence(pooled)

    def _model_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model's token ids (B, T), their mask (B, T) and the word position each belongs to (B, T)."""
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"token sequence of length {tokens.shape[1]} exceeds max_length {self.max_length}")
        batch, length = tokens.shape
        pieces = self.pieces[tokens]  # (B, L, P)
        keep = pieces >= 0
        if self.max_positions is not None:  # cut words past the model's positions, keep the closing token
            closing = (tokens == self.eos_id).unsqueeze(-1).expand_as(keep)
            budget = self.max_positions - int((self.pieces[self.eos_id] >= 0).sum())
            before = (keep & ~closing).flatten(1).cumsum(1).view_as(keep)
            fits = closing | (before <= budget)
            if not self._warned_cut and bool((keep & ~fits).any()):
                warnings.warn(
                    f"{self.folder}: a caption took more than the {self.max_positions} tokens the model reads; "
                    "its words past that are left out (this warning is shown once)",
                    stacklevel=3,
                )
                self._warned_cut = True
            keep = keep & fits
        keep = keep.flatten(1)  # (B, L * P)
        owner = torch.arange(length, device=tokens.device).repeat_interleave(pieces.shape[-1]).expand_as(keep)
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept pieces first, in order
        used = int(keep.sum(1).max())
        mask = keep.gather(1, order)[:, :used]
        ids = pieces.flatten(1).gather(1, order)[:, :used]
        pad = self._tokenizer.value.pad_token_id
        ids = torch.where(mask, ids, torch.full_like(ids, pad if pad is not None else 0))
        return ids, mask, owner.gather(1, order)[:, :used].contiguous()

    # ------------------------------------------------------------------ checkpoints

    def check_source(self, saved_digest: torch.Tensor) -> None:
        """Raise :class:`TextSourceMismatch` unless ``saved_digest`` is this encoder's folder's."""
        if not torch.equal(saved_digest.cpu(), self.source_digest.cpu()):
            raise TextSourceMismatch(
                f"the pretrained text model at {self.folder} is not the one it was trained with (its files hash to "
                f"{bytes(self.source_digest.tolist()).hex()[:12]}…, the trained model's to "
                f"{bytes(saved_digest.tolist()).hex()[:12]}…)"
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        saved = state_dict.get(prefix + "source_digest")
        if saved is not None and saved.shape == self.source_digest.shape:
            self.check_source(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
