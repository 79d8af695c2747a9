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


@pytest.mark.parametrize("architecture", ["gru", "transformer"])
def test_text_encoder_ignores_padding_and_the_rest_of_the_batch(architecture):
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=10, max_length=6, width=16, sentence_dim=8, architecture=architecture).eval()
    short = torch.tensor([[2, 5, 6, 3, 0, 0]])
    words, sentence = encoder(short)
    assert words.shape == (1, 6, 16) and sentence.shape == (1, 8)
    # Beside a longer caption in one batch (the GRU packs rows of different lengths) it encodes alike.
    _, both = encoder(torch.cat([short, torch.tensor([[2, 7, 8, 9, 4, 3]])]))
    torch.testing.assert_close(both[:1], sentence)
    # One-hot token distributions (the captioner's relaxed path) encode as their ids.
    torch.testing.assert_close(encoder(torch.nn.functional.one_hot(short, 10).float())[1], sentence)
    # Changing what sits under padding positions never changes the sentence vector.
    encoder.token_embedding.weight.data[0] += 5.0
    torch.testing.assert_close(encoder(short)[1], sentence)


def test_the_gru_text_encoder_runs_under_bf16_autocast():
    # Training on GPUs runs under bf16 autocast; the recurrence itself stays in float32.
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=10, max_length=6, width=16, sentence_dim=8)
    tokens = torch.tensor([[2, 5, 6, 3, 0, 0], [2, 7, 8, 9, 4, 3]])
    reference = encoder(tokens)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sentence = encoder(tokens)[1]
    torch.testing.assert_close(sentence.float(), reference, atol=0.05, rtol=0.05)  # bf16 keeps ~3 digits


def _relation_captions(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions "[there is] a C1 left|right of a C2" over 5 colours, and what a dot-product critic
    must read from them: each colour's side, +1 for the right-hand object and -1 for the left-hand one."""
    bos, eos, there, is_, a, left, right, of, colour0 = 2, 3, 4, 5, 6, 7, 8, 9, 10
    first, second = torch.randint(5, (2, count), generator=generator)
    second = torch.where(second == first, (first + 1) % 5, second)
    to_right = torch.randint(2, (count,), generator=generator).bool()  # "C1 right of C2"
    prefix = torch.randint(2, (count,), generator=generator).bool()  # shifts every word's position
    tokens = torch.zeros(count, 10, dtype=torch.long)
    target = torch.zeros(count, 5)
    for i in range(count):
        words = [there, is_] if prefix[i] else []
        words += [a, colour0 + first[i], right if to_right[i] else left, of, a, colour0 + second[i]]
        tokens[i, : len(words) + 2] = torch.tensor([bos, *words, eos])
        side = 1.0 if to_right[i] else -1.0
        target[i, first[i]], target[i, second[i]] = side, -side
    return tokens, target


def _order_read(architecture: str, scramble: bool) -> float:
    """Train an encoder and a linear head for 300 steps to read each colour's side; held-out accuracy."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    encoder = TextEncoder(20, 10, width=32, sentence_dim=32, architecture=architecture)
    head = torch.nn.Linear(32, 5)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    tokens, target = _relation_captions(600, generator)
    if scramble:  # the same words in a random order: a bag of words, the control
        order = torch.rand(tokens.shape, generator=generator).masked_fill(tokens == 0, 2.0).argsort(1)
        tokens = tokens.gather(1, order)
    for _ in range(300):
        rows = torch.randint(500, (32,), generator=generator)
        loss = torch.nn.functional.mse_loss(head(encoder(tokens[rows])[1]), target[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        read = head(encoder(tokens[500:])[1])
    left_colour, right_colour = target[500:].argmin(1), target[500:].argmax(1)
    rows = torch.arange(100)
    return float((read[rows, right_colour] > read[rows, left_colour]).float().mean())


@pytest.mark.parametrize("architecture", ["gru", "transformer"])
def test_the_text_encoder_can_read_which_colour_is_on_which_side(architecture):
    # A critic that scores image and text by a dot product needs each colour signed by its side of
    # the relation: a product of word order and relation that no sum of words holds (the control).
    # Taught directly both architectures learn it on this small language; from the discriminator's
    # losses on the shapes captions only the GRU did (benchmarks/README.md, Binding).
    assert _order_read(architecture, scramble=False) >= 0.95
    if architecture == "gru":
        assert _order_read(architecture, scramble=True) <= 0.7


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
    encoder = TextEncoder(vocab_size=200, max_length=24, architecture="transformer")
    ratio = encoder.position_embedding.std() / encoder.token_embedding.weight.std()
    assert 0.8 < float(ratio) < 1.25


def test_noise_injection_starts_as_the_plain_generator_and_is_a_function_of_z():
    """Off: the same weights as before; on: the same images until its strengths move, then images
    that change with z at every stage, the same for the same z, and a gradient for each strength."""
    from m2gan.networks import Generator

    torch.manual_seed(0)
    plain = Generator()
    torch.manual_seed(0)
    noisy = Generator(noise_injection=True)
    state = noisy.state_dict()
    assert all(torch.equal(value, state[name]) for name, value in plain.state_dict().items())
    z, sentence = torch.randn(4, 64), torch.randn(4, 64)
    assert torch.equal(plain(z, sentence), noisy(z, sentence))  # strengths start at 0
    noisy(z, sentence).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in noisy.noise_strength.values())
    with torch.no_grad():
        for strength in noisy.noise_strength.values():
            strength.fill_(0.5)
        assert torch.equal(noisy(z, sentence), noisy(z, sentence))  # deterministic in z: seeds still hold
        assert not torch.allclose(noisy(z, sentence), plain(z, sentence))
        for side in ("8", "16", "32"):  # each stage's map alone moves the image
            only = Generator(noise_injection=True)
            only.load_state_dict(noisy.state_dict())
            for other, strength in only.noise_strength.items():
                strength.fill_(0.5 if other == side else 0.0)
            assert not torch.allclose(only(z, sentence), plain(z, sentence)), side
