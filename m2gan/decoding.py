"""Caption decoding for :class:`~m2gan.networks.Captioner`: greedy, temperature sampling, beam search.

Every function returns token rows in the tokenizer's layout, ``(B, max_length)`` long:
``[BOS] w1 … wn [EOS] [PAD] …`` (a row that reaches ``max_length`` without ``[EOS]`` simply ends).
The decoder is re-run on the whole prefix at every step: captions are short and the model small,
so a key-value cache would add code without a measurable gain on a CPU.

:func:`straight_through` turns sampled captions into differentiable one-hot rows, the relaxation
behind the adversarial caption loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from m2gan.networks.captioner import Captioner


def _start(captioner: Captioner, images: torch.Tensor, bos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    memory = captioner.encode(images)  # (B, P, W)
    tokens = torch.full((images.shape[0], 1), bos_id, dtype=torch.long, device=images.device)
    return memory, tokens


def _finish(tokens: torch.Tensor, max_length: int, pad_id: int) -> torch.Tensor:
    return F.pad(tokens, (0, max_length - tokens.shape[1]), value=pad_id)


def sample(
    captioner: Captioner,
    images: torch.Tensor,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode one caption per image, token by token.

    Args:
        captioner: The captioning network.
        images: (B, 3, H, W) in [-1, 1].
        bos_id, eos_id, pad_id: Special token ids of the tokenizer.
        temperature: 0 picks the most likely token (greedy); a positive value samples from the
            softmax of ``logits / temperature``.
        generator: Random generator for sampling (on the images' device); None uses the global one.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    memory, tokens = _start(captioner, images, bos_id)
    done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    for _ in range(captioner.max_length - 1):
        logits = captioner.decode(memory, tokens)[:, -1]  # (B, V)
        if temperature == 0:
            next_token = logits.argmax(dim=1)
        else:
            probs = F.softmax(logits.float() / temperature, dim=1)
            next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        next_token = torch.where(done, torch.full_like(next_token, pad_id), next_token)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done |= next_token == eos_id
        if done.all():
            break
    return _finish(tokens, captioner.max_length, pad_id)


def beam_search(
    captioner: Captioner,
    images: torch.Tensor,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    num_beams: int = 4,
    length_penalty: float = 1.0,
) -> torch.Tensor:
    """Decode the most likely caption per image with a beam of ``num_beams`` hypotheses.

    A finished hypothesis (one that emitted ``[EOS]``) is extended only with ``[PAD]`` at no cost.
    The winner maximises ``sum log p / length ** length_penalty`` over words and ``[EOS]``
    (0 = raw log-probability, which favours short captions; 1 = mean log-probability).
    ``num_beams=1`` is exactly greedy decoding.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}")
    batch, k = images.shape[0], num_beams
    memory, tokens = _start(captioner, images, bos_id)
    memory = memory.repeat_interleave(k, dim=0)  # (B*K, P, W)
    tokens = tokens.repeat_interleave(k, dim=0)  # (B*K, 1)
    # Only the first beam of each image is live at the start, so the K beams do not all repeat it.
    scores = torch.full((batch, k), float("-inf"), device=images.device)
    scores[:, 0] = 0.0
    lengths = torch.zeros(batch * k, device=images.device)
    done = torch.zeros(batch * k, dtype=torch.bool, device=images.device)
    for _ in range(captioner.max_length - 1):
        log_probs = F.log_softmax(captioner.decode(memory, tokens)[:, -1].float(), dim=1)  # (B*K, V)
        vocab = log_probs.shape[1]
        # A finished beam continues with [PAD] at log-probability 0 and nothing else.
        finished = torch.full_like(log_probs, float("-inf"))
        finished[:, pad_id] = 0.0
        log_probs = torch.where(done[:, None], finished, log_probs)
        candidates = (scores.reshape(-1, 1) + log_probs).reshape(batch, k * vocab)
        scores, flat = candidates.topk(k, dim=1)  # (B, K)
        parent = (flat // vocab + torch.arange(batch, device=images.device)[:, None] * k).reshape(-1)
        next_token = (flat % vocab).reshape(-1)
        tokens = torch.cat([tokens[parent], next_token[:, None]], dim=1)
        lengths = lengths[parent] + (~done[parent]).float()
        done = done[parent] | (next_token == eos_id)
        if done.all():
            break
    normalised = scores.reshape(-1) / lengths.clamp_min(1.0) ** length_penalty
    best = normalised.reshape(batch, k).argmax(dim=1) + torch.arange(batch, device=images.device) * k
    return _finish(tokens[best], captioner.max_length, pad_id)


def straight_through(
    captioner: Captioner, memory: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Differentiable one-hot rows (B, max_length, V) of sampled captions ``tokens``.

    ``memory`` is ``captioner.encode(images)`` of the captioned images (a caller that also needs
    it for another loss encodes the images once).

    The forward value is exactly ``one_hot(tokens)``; the gradient is that of
    ``softmax(logits / temperature)`` of the captioner's teacher-forced pass over its own tokens
    (the straight-through estimator of a categorical sample, Bengio et al. 2013; with the tokens
    drawn by :func:`sample` at temperature 1, it is the straight-through Gumbel-softmax of Jang et
    al. 2017). Row position 0 (``[BOS]``) is constant.
    """
    logits = captioner.decode(memory, tokens[:, :-1])  # (B, L-1, V): predicts tokens[:, 1:]
    soft = F.softmax(logits.float() / temperature, dim=-1)
    hard = F.one_hot(tokens, logits.shape[-1]).to(soft.dtype)  # (B, L, V)
    relaxed = hard[:, 1:] + soft - soft.detach()
    return torch.cat([hard[:, :1], relaxed], dim=1)
