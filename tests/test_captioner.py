"""The captioner and its decoding: causal, consistent across strategies, differentiable where it must be."""

from __future__ import annotations

import pytest
import torch

from m2gan import decoding
from m2gan.networks import Captioner, Discriminator, TextEncoder
from m2gan.tokenizer import BOS_ID, EOS_ID, PAD_ID

VOCAB, LENGTH = 20, 10


@pytest.fixture
def captioner() -> Captioner:
    torch.manual_seed(0)
    return Captioner(32, VOCAB, LENGTH, width=16, num_layers=2, base_channels=4).eval()


def test_teacher_forced_logits_have_one_row_per_predicted_token(captioner):
    images, tokens = torch.randn(3, 3, 32, 32), torch.randint(4, VOCAB, (3, LENGTH))
    assert captioner(images, tokens).shape == (3, LENGTH - 1, VOCAB)


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_image_encoder_gives_an_8x8_grid_at_every_resolution(resolution):
    captioner = Captioner(resolution, VOCAB, LENGTH, width=16, base_channels=4)
    assert captioner.encode(torch.randn(2, 3, resolution, resolution)).shape == (2, 64, 16)


def test_a_future_token_cannot_change_an_earlier_logit(captioner):
    memory = captioner.encode(torch.randn(2, 3, 32, 32))
    tokens = torch.randint(4, VOCAB, (2, LENGTH - 1))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % VOCAB
    before, after = captioner.decode(memory, tokens), captioner.decode(memory, changed)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_greedy_rows_follow_the_tokenizer_layout(captioner):
    rows = decoding.sample(captioner, torch.randn(4, 3, 32, 32), BOS_ID, EOS_ID, PAD_ID)
    assert rows.shape == (4, LENGTH) and (rows[:, 0] == BOS_ID).all()
    for row in rows.tolist():
        if EOS_ID in row:
            assert set(row[row.index(EOS_ID) + 1 :]) <= {PAD_ID}


def test_greedy_picks_the_most_likely_token_at_every_step(captioner):
    images = torch.randn(3, 3, 32, 32)
    rows = decoding.sample(captioner, images, BOS_ID, EOS_ID, PAD_ID)
    logits = captioner.decode(captioner.encode(images), rows[:, :-1])
    for b, row in enumerate(rows.tolist()):
        for t in range(1, LENGTH):
            assert row[t] == logits[b, t - 1].argmax().item()
            if row[t] == EOS_ID:
                break


def test_beam_of_one_equals_greedy(captioner):
    images = torch.randn(5, 3, 32, 32)
    greedy = decoding.sample(captioner, images, BOS_ID, EOS_ID, PAD_ID)
    assert torch.equal(decoding.beam_search(captioner, images, BOS_ID, EOS_ID, PAD_ID, num_beams=1), greedy)


def test_wider_beam_finds_a_caption_at_least_as_likely_as_greedy_one_step_deep():
    # A two-token vocabulary after [BOS]: beam search must weigh both first tokens.
    torch.manual_seed(3)
    captioner = Captioner(32, 6, 4, width=16, num_layers=1, base_channels=4).eval()
    images = torch.randn(8, 3, 32, 32)

    def log_likelihood(rows: torch.Tensor) -> torch.Tensor:
        log_probs = captioner(images, rows).log_softmax(-1).gather(2, rows[:, 1:, None]).squeeze(2)
        keep = torch.ones_like(log_probs, dtype=torch.bool)
        for b, row in enumerate(rows.tolist()):
            if EOS_ID in row[1:]:
                keep[b, row.index(EOS_ID, 1) :] = False
        return (log_probs * keep).sum(1)

    greedy = decoding.sample(captioner, images, BOS_ID, EOS_ID, PAD_ID)
    beam = decoding.beam_search(captioner, images, BOS_ID, EOS_ID, PAD_ID, num_beams=6, length_penalty=0.0)
    # With 6 beams over a 6-token vocabulary and 3 steps, every prefix of length 1 survives.
    assert (log_likelihood(beam) >= log_likelihood(greedy) - 1e-5).all()


def test_sampling_is_reproducible_with_a_seed_and_greedy_at_zero_temperature(captioner):
    images = torch.randn(4, 3, 32, 32)

    def draw(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return decoding.sample(captioner, images, BOS_ID, EOS_ID, PAD_ID, temperature=5.0, generator=generator)

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_straight_through_is_one_hot_forward_and_trains_the_captioner(captioner):
    images = torch.randn(2, 3, 32, 32)
    tokens = decoding.sample(captioner, images, BOS_ID, EOS_ID, PAD_ID, temperature=1.0)
    relaxed = decoding.straight_through(captioner, captioner.encode(images), tokens)
    torch.testing.assert_close(relaxed, torch.nn.functional.one_hot(tokens, VOCAB).float())
    (relaxed * torch.randn_like(relaxed)).sum().backward()
    assert captioner.to_logits.weight.grad is not None and captioner.to_logits.weight.grad.abs().sum() > 0


def test_soft_tokens_equal_hard_tokens_on_one_hot_rows():
    torch.manual_seed(0)
    encoder, discriminator = TextEncoder(VOCAB, LENGTH, width=16, sentence_dim=8), Discriminator(32, 8, 4, 16, 8)
    tokens = torch.tensor([[BOS_ID, 5, 6, 7, EOS_ID] + [PAD_ID] * 5, [BOS_ID, 9, EOS_ID] + [PAD_ID] * 7])
    words_hard, sentence_hard = encoder(tokens)
    words_soft, sentence_soft = encoder(torch.nn.functional.one_hot(tokens, VOCAB).float())
    torch.testing.assert_close(sentence_soft, sentence_hard)
    torch.testing.assert_close(words_soft[tokens != PAD_ID], words_hard[tokens != PAD_ID])
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(discriminator(images, sentence_soft), discriminator(images, sentence_hard))
