"""Network shapes at every supported resolution, and clear errors for unsupported ones."""

from __future__ import annotations

import pytest
import torch

from m2gan.networks import AttributeClassifier, Discriminator, Generator, TextEncoder


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_generator_and_discriminator_shapes(resolution):
    generator = Generator(resolution, noise_dim=8, sentence_dim=16, base_channels=4, max_channels=16)
    discriminator = Discriminator(resolution, sentence_dim=16, base_channels=4, max_channels=16, embed_dim=8)
    images = generator(torch.randn(2, 8), torch.randn(2, 16))
    assert images.shape == (2, 3, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    assert discriminator(images, torch.randn(2, 16)).shape == (2,)
    embedding, unconditional = discriminator.features(images)
    assert embedding.shape == (2, 8) and unconditional.shape == (2,)


@pytest.mark.parametrize("resolution", [16, 48, 512, 100])
def test_unsupported_resolutions_are_refused(resolution):
    with pytest.raises(ValueError, match="power of two from 32 to 256"):
        Generator(resolution)
    with pytest.raises(ValueError, match="power of two from 32 to 256"):
        Discriminator(resolution)


def test_text_encoder_ignores_padding():
    encoder = TextEncoder(vocab_size=10, max_length=6, width=16, sentence_dim=8).eval()
    short = torch.tensor([[2, 5, 6, 3, 0, 0]])
    other_padding = torch.tensor([[2, 5, 6, 3, 0, 0]])
    words, sentence = encoder(short)
    assert words.shape == (1, 6, 16) and sentence.shape == (1, 8)
    # Changing what sits under padding positions never changes the sentence vector.
    encoder.token_embedding.weight.data[0] += 5.0
    torch.testing.assert_close(encoder(other_padding)[1], sentence)


def test_projection_head_depends_on_the_text():
    discriminator = Discriminator(32, sentence_dim=16, base_channels=4, max_channels=16, embed_dim=8)
    images = torch.randn(3, 3, 32, 32)
    assert not torch.allclose(discriminator(images, torch.randn(3, 16)), discriminator(images, torch.randn(3, 16)))


def test_attribute_classifier_heads():
    classifier = AttributeClassifier({"shape": 4, "colour": 7})
    logits = classifier(torch.randn(2, 3, 32, 32))
    assert logits["shape"].shape == (2, 4) and logits["colour"].shape == (2, 7)


def _attending_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(32, noise_dim=8, sentence_dim=16, base_channels=4, max_channels=16, word_dim=12,
                     attention_sides=(8, 16))  # fmt: skip


def test_word_attention_spreads_over_words_and_never_over_padding():
    attention = _attending_generator().attention["8"]
    x, words = torch.randn(2, 16, 8, 8), torch.randn(2, 5, 12)
    padding = torch.tensor([[False, False, False, True, True], [False] * 5])
    weights = attention.weights(x, words, padding)  # (B, 64 positions, 5 words)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 64))
    assert weights[0, :, 3:].abs().max() == 0 and weights[0, :, :3].min() > 0
    # What sits under padding never reaches the output, whatever it is.
    attention.gate.data.fill_(1.0)
    changed = words.clone()
    changed[0, 3:] += 100.0
    torch.testing.assert_close(attention(x, changed, padding), attention(x, words, padding))


def test_a_closed_gate_is_the_sentence_only_generator_and_an_open_one_listens_to_words():
    attending = _attending_generator()
    torch.manual_seed(0)
    plain = Generator(32, noise_dim=8, sentence_dim=16, base_channels=4, max_channels=16)
    assert {k for k in attending.state_dict() if not k.startswith("attention.")} == set(plain.state_dict())
    plain.load_state_dict({k: v for k, v in attending.state_dict().items() if not k.startswith("attention.")})
    z, sentence, padding = torch.randn(2, 8), torch.randn(2, 16), torch.zeros(2, 4, dtype=torch.bool)
    words = torch.randn(2, 4, 12)
    torch.testing.assert_close(attending(z, sentence, words, padding), plain(z, sentence))  # gates start closed
    for attention in attending.attention.values():
        attention.gate.data.fill_(0.5)
        torch.nn.init.normal_(attention.out.weight)
    assert not torch.allclose(attending(z, sentence, words, padding), attending(z, sentence, words.flip(1), padding))
    with pytest.raises(ValueError, match="pass words and padding"):
        attending(z, sentence)


def test_attention_sides_must_be_stages_of_the_generator():
    with pytest.raises(ValueError, match=r"attention sides \[4, 64\]"):
        Generator(32, attention_sides=(4, 8, 64))


def test_position_embeddings_start_at_the_word_embeddings_scale():
    # Far smaller position embeddings left the trained sentence vector blind to word order
    # (m2gan/networks/text_encoder.py): a caption and its colour-exchanged twin encoded alike.
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=200, max_length=24)
    ratio = encoder.position_embedding.std() / encoder.token_embedding.weight.std()
    assert 0.8 < float(ratio) < 1.25
