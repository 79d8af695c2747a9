"""Each loss on hand-made inputs with known values."""

from __future__ import annotations

import math

import pytest
import torch

from m2gan import losses


def test_hinge_discriminator_loss_values():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    # real: mean(relu(1-2), relu(1-0)) = 0.5; fake: mean(relu(1-2), relu(1.5)) = 0.75
    assert losses.d_adversarial(real, [(fake, 1.0)], "hinge").item() == pytest.approx(1.25)
    mismatched = torch.tensor([1.0, -1.0])  # mean(relu(2), relu(0)) = 1
    # real + (fake + w * mismatched) / (1 + w) with w = 3: 0.5 + (0.75 + 3) / 4
    assert losses.d_adversarial(real, [(fake, 1.0), (mismatched, 3.0)], "hinge").item() == pytest.approx(1.4375)
    # a zero weight drops its term
    assert losses.d_adversarial(real, [(fake, 1.0), (mismatched, 0.0)], "hinge").item() == pytest.approx(1.25)


def test_non_saturating_losses_values():
    zero = torch.zeros(4)
    assert losses.d_adversarial(zero, [(zero, 1.0)], "non_saturating").item() == pytest.approx(2 * math.log(2))
    assert losses.g_adversarial(zero, "non_saturating").item() == pytest.approx(math.log(2))
    assert losses.g_adversarial(torch.tensor([1.0, 3.0]), "hinge").item() == pytest.approx(-2.0)


def test_unknown_loss_kind_is_refused():
    with pytest.raises(ValueError, match="unknown adversarial loss"):
        losses.g_adversarial(torch.zeros(2), "wasserstein")


def test_hard_negatives_raise_the_contrastive_loss_only_when_close():
    embedding = torch.eye(4) * 5
    far = -embedding  # opposite direction: negligible
    assert losses.contrastive(embedding, embedding, 0.1, hard_negatives=far).item() < 1e-3
    # a hard negative identical to the positive makes the image side a coin flip between the two
    same = losses.contrastive(embedding, embedding, 0.1, hard_negatives=embedding).item()
    assert same == pytest.approx(0.5 * math.log(2), abs=1e-3)


def test_contrastive_is_low_for_aligned_pairs_and_high_for_shuffled():
    embedding = torch.eye(4) * 5
    aligned = losses.contrastive(embedding, embedding, temperature=0.1)
    shuffled = losses.contrastive(embedding, embedding.roll(1, 0), temperature=0.1)
    assert aligned.item() < 1e-3
    assert shuffled.item() > 5
    # uniform similarities give log(B)
    assert losses.contrastive(torch.ones(4, 3), torch.ones(4, 3), 1.0).item() == pytest.approx(math.log(4))


def test_r1_penalty_of_a_linear_critic():
    images = torch.randn(3, 2, 2, 2, requires_grad=True)
    weight = torch.full((2, 2, 2), 0.5)
    logits = (images * weight).flatten(1).sum(1)
    # gradient is the weight everywhere: squared norm 8 * 0.25 = 2 per sample
    assert losses.r1_penalty(logits, images).item() == pytest.approx(2.0)


def test_matching_aware_gradient_penalty_of_a_linear_critic():
    images = torch.randn(2, 1, 1, 1, requires_grad=True)
    sentence = torch.randn(2, 1, requires_grad=True)
    logits = 3 * images.flatten(1).sum(1) + 4 * sentence.sum(1)
    # gradient norm sqrt(3^2 + 4^2) = 5, to the power 2
    assert losses.matching_aware_gradient_penalty(logits, images, sentence, power=2).item() == pytest.approx(25.0)


def test_word_region_similarity_matches_words_to_the_regions_that_show_them():
    from m2gan.losses import matching_cross_entropy, word_region_similarity

    torch.manual_seed(0)
    words = torch.randn(3, 4, 8)
    padding = torch.tensor([[False, False, True, True], [False, False, False, True], [False] * 4])
    # Image i's regions are caption i's words (and some clutter): the diagonal must win every row and column.
    regions = torch.cat([words, torch.randn(3, 5, 8)], dim=1)
    similarity = word_region_similarity(words, padding, regions, sharpness=50.0)
    assert similarity.shape == (3, 3)
    assert torch.equal(similarity.argmax(0), torch.arange(3)) and torch.equal(similarity.argmax(1), torch.arange(3))
    # Padding words count for nothing, whatever they hold.
    changed = words.clone()
    changed[0, 2:] = torch.randn(2, 8)
    torch.testing.assert_close(word_region_similarity(changed, padding, regions, 50.0)[:, 0], similarity[:, 0])
    assert matching_cross_entropy(similarity, 0.1) < matching_cross_entropy(similarity.flip(1), 0.1)


def test_matching_cross_entropy_ranks_hard_negatives_on_the_image_side_only():
    from m2gan.losses import matching_cross_entropy

    similarity = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    plain = matching_cross_entropy(similarity, 1.0)
    # Absent hard negatives (-inf) change nothing.
    assert matching_cross_entropy(similarity, 1.0, torch.full((2, 1), float("-inf"))).item() == pytest.approx(plain.item())
    # One hard negative as close as the caption for image 0: its image-side term is log(e + 1 + e) - 1.
    hard = torch.tensor([[1.0], [float("-inf")]])
    image_side = (math.log(2 * math.e + 1) - 1 + math.log(math.e + 1) - 1) / 2
    text_side = math.log(math.e + 1) - 1
    assert matching_cross_entropy(similarity, 1.0, hard).item() == pytest.approx(0.5 * (image_side + text_side))


def test_likelihood_margin_pushes_only_pairs_closer_than_the_margin():
    own = torch.tensor([-3.0, -3.0, -3.0], requires_grad=True)
    twin = torch.tensor([-10.0, -3.5, -2.0])  # 7 nats apart (met), 0.5 apart, the twin likelier
    loss = losses.likelihood_margin(own, twin, margin=1.0)
    assert loss.item() == pytest.approx((0.0 + 0.5 + 2.0) / 3)
    loss.backward()
    assert own.grad.tolist() == pytest.approx([0.0, -1 / 3, -1 / 3])  # a met pair is left alone


def test_sequence_log_likelihood_sums_the_targets_and_skips_padding():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]]))  # (1, 3, V=3)
    tokens = torch.tensor([[2, 1, 1, 0]])  # targets 1, 1, then padding (id 0)
    expected = math.log(0.25) + math.log(0.8)
    assert losses.sequence_log_likelihood(logits, tokens, pad_id=0).item() == pytest.approx(expected)


def test_text_contrastive_is_blind_to_missing_twins_and_duplicates_but_not_to_present_ones():
    anchor = torch.eye(3)  # three captions, each nearest its own paraphrase
    hard = torch.stack([anchor, anchor.roll(1, 0)], dim=1)  # (3, 2, 3): twin 0 of each caption is the caption itself
    none = torch.zeros(3, 2, dtype=torch.bool)
    base = losses.text_contrastive(anchor, anchor, hard, none, 0.1)
    present = none.clone()
    present[0, 0] = True  # a bag of words' twin: where its caption is
    # The twin scores as high as the paraphrase: row 0 can give it at most half (log 2), the others ~0.
    assert base < 1e-3
    with_twin = losses.text_contrastive(anchor, anchor, hard, present, 0.1).item()
    assert with_twin == pytest.approx(math.log(2) / 3, abs=1e-3)
    repeated = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 0, 1]])  # captions 0 and 1 say the same
    duplicates = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    with_copies = losses.text_contrastive(repeated, repeated, hard, none, 0.1)
    assert with_copies.item() == pytest.approx(2 * math.log(2) / 3, abs=1e-3)  # each copy halves the other's row
    assert losses.text_contrastive(repeated, repeated, hard, none, 0.1, duplicates).item() < 1e-3


def test_the_text_order_loss_pushes_a_caption_and_its_twins_apart():
    """On two-object shapes captions, a GRU text encoder trained by the text-order loss alone moves each
    caption's binding twins away from it: from next to it (a freshly initialised encoder is nearly a
    bag of words) to at least half as far as another caption."""
    from m2gan.data.shapes import ShapesDataset
    from m2gan.negatives import WordPairs
    from m2gan.networks import TextEncoder
    from m2gan.objective import Twins
    from m2gan.tokenizer import CaptionTokenizer

    torch.manual_seed(0)
    data = ShapesDataset("train", 256, two_object_prob=1.0)
    captions, paraphrases = zip(*(data.references(i, 2) for i in range(len(data))))
    tokenizer = CaptionTokenizer.fit(captions + paraphrases, max_length=24)
    tokens, paraphrase = tokenizer.encode(list(captions)), tokenizer.encode(list(paraphrases))
    pairs = WordPairs.of(torch.cat([tokens, paraphrase]), tokenizer.vocab_size)
    twins = Twins.of(tokens, pairs)
    encoder = TextEncoder(tokenizer.vocab_size, 24, width=32, sentence_dim=32)

    def twin_distance() -> float:
        with torch.no_grad():
            sentence, twin_sentence = encoder(tokens)[1], encoder(twins.tokens)[1]
        other = (sentence - sentence.roll(1, 0)).norm(dim=1).mean()
        return float((sentence[twins.rows] - twin_sentence).norm(dim=1).mean() / other)

    before = twin_distance()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    for step in range(120):
        rows = torch.arange(32) + 32 * (step % 8)
        batch = Twins.of(tokens[rows], pairs)
        texts = torch.cat([tokens[rows], paraphrase[rows], batch.tokens])
        sentences = encoder(texts)[1].split([32, 32, len(batch.rows)])
        hard, mask = batch.per_row(sentences[2], 32)
        loss = losses.text_contrastive(sentences[0], sentences[1], hard, mask, 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = twin_distance()
    assert before < 0.3 and after > 0.5, (before, after)


def test_mode_seeking_is_the_inverse_image_distance_per_noise_distance():
    a = torch.zeros(2, 3, 4, 4)
    z, z_other = torch.zeros(2, 8), torch.ones(2, 8)  # noise distance 1
    assert losses.mode_seeking(a, a + 0.5, z, z_other).item() == pytest.approx(1 / (0.5 + losses.MODE_SEEKING_EPS))
    assert losses.mode_seeking(a, a + 0.5, z, z_other * 2).item() == pytest.approx(1 / (0.25 + losses.MODE_SEEKING_EPS))
    # A generator that ignores its noise pays the most.
    assert losses.mode_seeking(a, a, z, z_other).item() == pytest.approx(1 / losses.MODE_SEEKING_EPS)
