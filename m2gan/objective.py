"""The GAN objective of M2GAN: how the loss formulas of ``losses.py`` combine for one batch.

Plain PyTorch over the four networks: no optimiser, no Lightning. ``M2GAN.training_step`` and the
plain-loop baseline of the benchmarks both call it, so the two differ only in their loops.

One batch gives two losses:

* :meth:`GANObjective.discriminator_loss`, minimised by the discriminator and the text encoder:
  the matching-aware adversarial loss with its negatives — (generated image, caption), (real image,
  another sample's caption), (real image, its caption with one word swapped or, if on, two of its
  words exchanged), (real image, a caption the captioner sampled), if on (real image, each of its
  caption's binding twins) — plus the image–text
  contrastive loss, the word-region matching loss if on (with the binding twins among its
  candidates if on), the text-order loss if on (captions near
  their paraphrases, away from their binding twins: text only), and, on penalty batches, the lazy
  gradient penalty;
* :meth:`GANObjective.generator_loss`, minimised by the generator and the captioner: adversarial,
  contrastive (sentence and, if on, word-region) and cycle losses of the generated images and, if
  on, the frozen captioner's preference for each prompt over its binding twins and the
  mode-seeking term (half the captions drawn again with other noise); the captioner's
  cross-entropy on real pairs and, if on, its own preference over the twins and its adversarial
  caption loss.

Where the text encoder gets its gradient decides whether conditioning is learned at all: trained
only to help the generator fool the discriminator, its features collapse and the generator ignores
the text. So it is trained by the discriminator's losses, and the generator sees its sentence
vectors detached (:class:`TextBatch`). For the cycle and preference losses the captioner is frozen,
or generator and captioner would agree on a private code instead of drawing the text.

Random draws, in this order: the captioner's sampled captions (adversarial caption loss only), the
swapped words (each of the mined candidates' in turn), the discriminator step's noise and, with
``augment_translation``, its shifts, then the generator step's noise, its shifts, and, with the
mode-seeking term, its second noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from m2gan import augment, decoding, losses
from m2gan.negatives import WordPairs, binding_twins, hard_negatives
from m2gan.networks import Captioner, Discriminator, Generator, TextEncoder
from m2gan.settings import ObjectiveSettings
from m2gan.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS


class TextBatch(NamedTuple):
    """What the discriminator's loss hands the generator's about a batch's captions."""

    tokens: torch.Tensor
    """(B, L) token rows of the batch's captions."""
    sentence: torch.Tensor
    """(B, S) their sentence vectors, detached."""
    words: torch.Tensor
    """(B, L, W) their word features, detached (read by a generator that attends to words)."""
    padding: torch.Tensor
    """(B, L) True at padding positions of ``tokens``."""
    swapped_sentence: torch.Tensor | None
    """(B, S) sentence vectors of the word-swapped captions (None when ``swap_weight`` is 0)."""
    sampled_tokens: torch.Tensor | None
    """(B, L) the captioner's sampled captions of the real images (None unless the adversarial
    caption loss is on)."""
    twins: Twins | None = None
    """The captions' binding twins (None unless a loss reads them)."""
    twin_words: torch.Tensor | None = None
    """(T, L, W) the twins' word features, detached (the word-region loss with twins only)."""


class Twins(NamedTuple):
    """A batch's binding twins of every kind, flattened: twin ``t`` belongs to caption ``rows[t]``."""

    tokens: torch.Tensor
    """(T, L) token rows of the twins."""
    rows: torch.Tensor
    """(T,) long: the batch row of each twin's caption."""

    @classmethod
    def of(cls, tokens: torch.Tensor, pairs: WordPairs | None) -> Twins:
        """Every binding twin (:func:`~m2gan.negatives.binding_twins`) of the captions ``tokens`` (B, L)."""
        found = binding_twins(tokens, len(SPECIAL_TOKENS), pairs).values()
        rows = [has.nonzero().flatten() for _, has in found]
        return cls(torch.cat([twins[r] for (twins, _), r in zip(found, rows)]), torch.cat(rows))

    def per_row(self, values: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``values`` (T, ...) of the twins laid out per caption: (B, K, ...) with a (B, K) mask of
        the filled places (K = the most twins any caption has)."""
        owner = F.one_hot(self.rows, batch_size)  # (T, B)
        slot = (owner.cumsum(0) * owner).sum(1) - 1  # (T,) the how-manieth twin of its caption each is
        places = int(slot.max()) + 1 if len(slot) else 1
        out = values.new_zeros((batch_size, places, *values.shape[1:]))
        mask = torch.zeros((batch_size, places), dtype=torch.bool, device=values.device)
        out[self.rows, slot] = values
        mask[self.rows, slot] = True
        return out, mask


class Loss(NamedTuple):
    """One player's loss for a batch."""

    loss: torch.Tensor
    """The scalar to minimise (it may be non-finite: the caller's step guard decides)."""
    logs: dict[str, torch.Tensor]
    """Detached values to log, keyed ``train/…``."""
    text: TextBatch | None = None
    """What the generator's loss of the same batch needs (the discriminator's loss only)."""


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s parameters record no gradient (gradients still flow through it)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class GANObjective:
    """The losses of one batch, over the networks being trained (which it holds but does not own).

    Which parameters a loss trains is the caller's choice (Lightning's ``toggled_optimizer``, or
    the benchmarks' ``trains_only``): the losses here only say where gradients may flow.
    """

    def __init__(
        self,
        text_encoder: TextEncoder,
        generator: Generator,
        discriminator: Discriminator,
        captioner: Captioner,
        config: ObjectiveSettings,
        region_teacher: Discriminator | None = None,
    ) -> None:
        self.text_encoder, self.generator = text_encoder, generator
        self.discriminator, self.captioner = discriminator, captioner
        self.config = config
        self.region_teacher = region_teacher
        """A slow copy of the critic whose word-region head the generator's term reads (None: the live critic)."""
        self.word_pairs: WordPairs | None = None
        """Where each word was seen in the training captions (binding negatives); None = each batch's own."""

    def noise(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Training noise (B, noise_dim), drawn on the CPU so a seed gives the same run on any device."""
        return torch.randn(batch_size, self.generator.noise_dim).to(device)

    def critic_view(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (N, 3, H, W) as the critic sees them in training: randomly shifted when
        ``augment_translation`` is on (:mod:`m2gan.augment`), else unchanged."""
        if self.config.augment_translation <= 0:
            return images
        return augment.translate(images, self.config.augment_translation)

    def swaps(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) one hard negative of each caption ``tokens`` (B, L): a swapped word, or two words exchanged."""
        cfg = self.config
        return hard_negatives(tokens, len(SPECIAL_TOKENS), cfg.binding_negative_share, None, self.word_pairs,
                              cfg.swap_from_corpus)  # fmt: skip

    @torch.no_grad()
    def hardest_swaps(
        self, tokens: torch.Tensor, images: torch.Tensor, real: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """(B, L) of ``swap_candidates`` drawn swaps of each caption ``tokens`` (B, L), the one the critic
        scores highest with its real image (``images`` (B, 3, H, W); ``real``: the critic's features
        of them). A draw that left its caption unchanged is no negative. With ``swap_captioner_margin``,
        nor is one the captioner finds nearly as likely as the caption for the image (a synonym, "big"
        for "large", which the critic rightly cannot reject); a caption with no candidate left keeps
        its first changed draw, a random swap."""
        cfg, d = self.config, self.discriminator
        candidates = torch.stack([self.swaps(tokens) for _ in range(cfg.swap_candidates)])  # (K, B, L)
        # Swaps keep a caption's length, so columns that are padding in every caption stay so: reading
        # without them is exact (the padding mask, the captioner's causal mask) and saves most of the work.
        width = int((tokens != PAD_ID).any(0).nonzero().max()) + 1
        short = candidates[..., :width]  # (K, B, L')
        _, sentences = self.text_encoder(short.flatten(0, 1))
        embedding = d.embed_text(sentences).unflatten(0, candidates.shape[:2])  # (K, B, E)
        scores = torch.stack([d.score(real, e) for e in embedding])  # (K, B)
        changed = ~(candidates == tokens).all(-1)  # (K, B)
        scores = scores.masked_fill(~changed, -torch.inf)
        if cfg.swap_captioner_margin > 0:
            memory = self.captioner.encode(images)  # (B, P, W)
            texts = torch.cat([tokens[:, :width], short.flatten(0, 1)])  # ((K + 1) B, L')
            logits = self.captioner.decode(memory.repeat(len(candidates) + 1, 1, 1), texts[:, :-1])
            own, *drawn = losses.sequence_log_likelihood(logits, texts, PAD_ID).chunk(len(candidates) + 1)
            verified = changed & (own - torch.stack(drawn) >= cfg.swap_captioner_margin)  # (K, B)
            fallback = changed.float().masked_fill(~changed, -torch.inf)  # the first changed draw
            scores = torch.where(verified.any(0), scores.masked_fill(~verified, -torch.inf), fallback)
        return candidates[scores.argmax(0), torch.arange(tokens.shape[0], device=tokens.device)]

    def discriminator_loss(
        self, images: torch.Tensor, tokens: torch.Tensor, penalty: bool, paraphrase: torch.Tensor | None = None
    ) -> Loss:
        """The discriminator's (and text encoder's) loss on real ``images`` (B, 3, H, W) and ``tokens`` (B, L).

        Args:
            penalty: Whether this is a lazy-penalty batch (the penalty is then scaled by the interval).
            paraphrase: (B, L) another caption of each image (the same one where an image has one);
                needed by the text-order loss only.
        """
        cfg, d = self.config, self.discriminator
        batch_size = images.shape[0]
        penalty = penalty and cfg.has_gradient_penalty
        use_swaps = cfg.swap_weight > 0
        sampled_tokens = None
        if cfg.caption_adversarial_weight > 0:
            with torch.no_grad():
                sampled_tokens = decoding.sample(self.captioner, images, BOS_ID, EOS_ID, PAD_ID, temperature=1.0)
        twins = Twins.of(tokens, self.word_pairs) if cfg.uses_twins else None
        use_order = cfg.text_order_weight > 0
        if use_order and paraphrase is None:
            raise ValueError("the text-order loss (text_order_weight > 0) needs each caption's paraphrase")
        texts = {"caption": tokens}  # every caption the text encoder reads this batch, encoded in one call
        if use_swaps and cfg.swap_candidates > 1:
            with torch.no_grad():
                texts["swapped"] = self.hardest_swaps(tokens, images, d.features(images))
        elif use_swaps:
            texts["swapped"] = self.swaps(tokens)
        if sampled_tokens is not None:
            texts["sampled"] = sampled_tokens
        if use_order:
            texts["paraphrase"] = paraphrase
        use_twin_negatives = twins is not None and cfg.twin_negative_weight > 0 and len(twins.rows) > 0
        use_region_twins = twins is not None and cfg.word_region_twins and len(twins.rows) > 0
        if use_order or use_twin_negatives or use_region_twins:
            texts["twins"] = twins.tokens
        all_words, all_sentences = self.text_encoder(torch.cat(list(texts.values())))  # (N, L, W), (N, S)
        sizes = [len(t) for t in texts.values()]
        sentences = dict(zip(texts, all_sentences.split(sizes)))
        sentence, words, padding = sentences["caption"], all_words[:batch_size], tokens == PAD_ID
        twin_words = dict(zip(texts, all_words.split(sizes)))["twins"] if use_region_twins else None  # (T, L, W)
        with torch.no_grad():
            fake = self.generator(self.noise(batch_size, images.device), sentence.detach(), words.detach(), padding)
        if penalty:
            images = images.detach().requires_grad_(True)
        (embedding, unconditional), regions = d.features_and_regions(self.critic_view(torch.cat([images, fake])))
        real = (embedding[:batch_size], unconditional[:batch_size])
        fake = (embedding[batch_size:], unconditional[batch_size:])
        text_embedding = d.embed_text(sentence)  # (B, E)
        swapped_embedding = d.embed_text(sentences["swapped"]) if use_swaps else None
        real_logits = d.score(real, text_embedding)  # (B,)
        fake_logits = d.score(fake, text_embedding)
        # Each image paired with the previous sample's caption: the matching-aware negatives.
        mismatched_logits = d.score(real, text_embedding.roll(1, dims=0))
        negatives = [(fake_logits, 1.0), (mismatched_logits, cfg.mismatch_weight)]
        if use_swaps:
            swapped_logits = d.score(real, swapped_embedding)
            negatives.append((swapped_logits, cfg.swap_weight))
        if sampled_tokens is not None:
            sampled_logits = d.score(real, d.embed_text(sentences["sampled"]))
            negatives.append((sampled_logits, cfg.caption_adversarial_weight))
        if use_twin_negatives:  # (real image, its caption bound otherwise), every twin of every caption
            twin_real = tuple(part[twins.rows] for part in real)
            twin_logits = d.score(twin_real, d.embed_text(sentences["twins"]))  # (T,)
            negatives.append((twin_logits, cfg.twin_negative_weight))
        loss = losses.d_adversarial(real_logits, negatives, cfg.adversarial_loss)
        logs = {"train/d_adv": loss.detach()}
        if cfg.contrastive_weight_d > 0:
            contrastive = losses.contrastive(real[0], text_embedding, cfg.contrastive_temperature, swapped_embedding)
            loss = loss + cfg.contrastive_weight_d * contrastive
            logs["train/d_contrastive"] = contrastive.detach()
        if cfg.word_region_weight > 0:
            word_region = self.word_region_loss(words, padding, regions[:batch_size], twins, twin_words)
            loss = loss + cfg.word_region_weight * word_region
            logs["train/d_word_region"] = word_region.detach()
        if use_order:  # the conditioning itself must tell a caption from its twins
            twin_sentences, twin_mask = twins.per_row(sentences["twins"], batch_size)
            # (B, B): paraphrase j says what caption i or its paraphrase says; no negative of caption i.
            same = (paraphrase[None] == tokens[:, None]).all(-1) | (paraphrase[None] == paraphrase[:, None]).all(-1)
            same.fill_diagonal_(False)
            order = losses.text_contrastive(sentence, sentences["paraphrase"], twin_sentences, twin_mask,
                                            cfg.contrastive_temperature, same)  # fmt: skip
            loss = loss + cfg.text_order_weight * order
            logs["train/text_order"] = order.detach()
        if penalty:
            if cfg.gradient_penalty == "r1":
                gp = 0.5 * cfg.gp_weight * losses.r1_penalty(real_logits, images)
            else:
                gp = cfg.gp_weight * losses.matching_aware_gradient_penalty(real_logits, images, sentence)
            loss = loss + cfg.gp_interval * gp  # lazy regularisation: every gp_interval-th step, scaled up
            logs["train/gradient_penalty"] = gp.detach()
        with torch.no_grad():
            logs["train/d_loss"] = loss.detach()
            logs["train/real_logit"] = real_logits.mean()
            logs["train/fake_logit"] = fake_logits.mean()
            logs["train/match_acc"] = (real_logits > mismatched_logits).float().mean()
            if use_swaps:
                logs["train/swap_acc"] = (real_logits > swapped_logits).float().mean()
            if use_twin_negatives:
                logs["train/twin_acc"] = (real_logits[twins.rows] > twin_logits).float().mean()
        swapped_sentence = sentences["swapped"].detach() if use_swaps else None
        twin_words = twin_words.detach() if twin_words is not None else None
        text = TextBatch(tokens, sentence.detach(), words.detach(), padding, swapped_sentence, sampled_tokens, twins,
                         twin_words)  # fmt: skip
        return Loss(loss, logs, text)

    def word_region_loss(
        self,
        words: torch.Tensor,
        padding: torch.Tensor,
        regions: torch.Tensor,
        twins: Twins | None = None,
        twin_words: torch.Tensor | None = None,
        critic: Discriminator | None = None,
    ) -> torch.Tensor:
        """The word-region matching loss of captions' word features ``words`` (B, L, W) and images'
        ``regions`` (B, R, E); with ``twin_words`` (T, L, W), each image's binding twins are also
        candidates it must rank below its own caption (words attend to regions: the head that can read binding).
        ``critic``: whose head embeds the words (default: the trained discriminator)."""
        d, temperature = critic or self.discriminator, self.config.contrastive_temperature
        similarity = losses.word_region_similarity(d.embed_words(words), padding, regions)  # (B, B)
        if twin_words is None:
            return losses.matching_cross_entropy(similarity, temperature)
        # (T,): twin t against its own caption's image only.
        twin_similarity = losses.paired_word_region_similarity(
            d.embed_words(twin_words), twins.tokens == PAD_ID, regions[twins.rows]
        )
        per_row, mask = twins.per_row(twin_similarity, similarity.shape[0])  # (B, K)
        return losses.matching_cross_entropy(similarity, temperature, per_row.masked_fill(~mask, float("-inf")))

    def generator_loss(self, images: torch.Tensor, text: TextBatch) -> Loss:
        """The generator's and captioner's loss for real ``images`` and the ``text`` of the D loss.

        The generator draws the batch's captions (adversarial, contrastive and cycle losses); the
        captioner describes the real images (cross-entropy and, if on, adversarial caption loss).
        """
        cfg, d = self.config, self.discriminator
        sentence = text.sentence
        z = self.noise(sentence.shape[0], sentence.device)  # (B, Z)
        fake = self.generator(z, sentence, text.words, text.padding)
        seen = self.critic_view(fake)
        fake_features, fake_regions = d.features_and_regions(seen)
        text_embedding = d.embed_text(sentence)
        loss = losses.g_adversarial(d.score(fake_features, text_embedding), cfg.adversarial_loss)
        logs = {"train/g_adv": loss.detach()}
        if cfg.mode_seeking_weight > 0:  # half the captions drawn again with other noise
            half = max(1, sentence.shape[0] // 2)
            z_other = self.noise(half, sentence.device)
            words, padding = (t[:half] if t is not None else None for t in (text.words, text.padding))
            other = self.generator(z_other, sentence[:half], words, padding)
            mode_seeking = losses.mode_seeking(fake[:half], other, z[:half], z_other)
            loss = loss + cfg.mode_seeking_weight * mode_seeking
            logs["train/g_mode_seeking"] = mode_seeking.detach()
        if cfg.contrastive_weight_g > 0:
            hard = d.embed_text(text.swapped_sentence) if text.swapped_sentence is not None else None
            contrastive = losses.contrastive(fake_features[0], text_embedding, cfg.contrastive_temperature, hard)
            loss = loss + cfg.contrastive_weight_g * contrastive
            logs["train/g_contrastive"] = contrastive.detach()
        if cfg.generator_word_region_weight > 0:  # each word must be drawn where it can be found
            twin_words = text.twin_words if cfg.word_region_twins else None
            teacher = self.region_teacher
            if teacher is not None:  # a slow copy of the critic reads the drawing
                fake_regions = teacher.features_and_regions(seen)[1]
            word_region = self.word_region_loss(text.words, text.padding, fake_regions, text.twins, twin_words, teacher)
            loss = loss + cfg.generator_word_region_weight * word_region
            logs["train/g_word_region"] = word_region.detach()
        twins = text.twins if text.twins is not None and len(text.twins.rows) else None
        use_preference = cfg.caption_preference_weight > 0 and twins is not None
        if cfg.cycle_weight > 0 or use_preference:
            with frozen(self.captioner):  # the captioner judges here; it learns only from real pairs
                fake_memory = self.captioner.encode(fake)  # (B, P, W)
                if cfg.cycle_weight > 0:
                    logits = self.captioner.decode(fake_memory, text.tokens[:, :-1])
                    cycle = losses.caption_cross_entropy(logits, text.tokens, PAD_ID)
                    loss = loss + cfg.cycle_weight * cycle
                    logs["train/cycle"] = cycle.detach()
                if use_preference:  # the drawing must read as its caption, not as the same words bound otherwise
                    own, twin = twin_likelihoods(self.captioner, fake_memory, text.tokens, twins)
                    preference = losses.likelihood_margin(own, twin, cfg.twin_margin)
                    loss = loss + cfg.caption_preference_weight * preference
                    logs["train/caption_preference"] = preference.detach()
        use_real_captions = cfg.caption_weight > 0 or text.sampled_tokens is not None or cfg.caption_twin_weight > 0
        # Both real-image terms read the same image tokens: encode the images once.
        memory = self.captioner.encode(images) if use_real_captions else None  # (B, P, W)
        if cfg.caption_weight > 0:
            logits = self.captioner.decode(memory, text.tokens[:, :-1])  # (B, L-1, V)
            caption = losses.caption_cross_entropy(logits, text.tokens, PAD_ID, cfg.caption_label_smoothing)
            loss = loss + cfg.caption_weight * caption
            logs["train/caption"] = caption.detach()
        if cfg.caption_twin_weight > 0 and twins is not None:  # which colour, shape and side go together
            own, twin = twin_likelihoods(self.captioner, memory, text.tokens, twins)
            caption_twin = losses.likelihood_margin(own, twin, cfg.twin_margin)
            loss = loss + cfg.caption_twin_weight * caption_twin
            logs["train/caption_twin"] = caption_twin.detach()
        if text.sampled_tokens is not None:
            relaxed = decoding.straight_through(self.captioner, memory, text.sampled_tokens, cfg.caption_temperature)
            _, sampled_sentence = self.text_encoder(relaxed)  # frozen here: trained by the D loss
            with torch.no_grad():
                real_features = d.features(images)
            sampled_logits = d.score(real_features, d.embed_text(sampled_sentence))
            caption_adversarial = losses.g_adversarial(sampled_logits, cfg.adversarial_loss)
            loss = loss + cfg.caption_adversarial_weight * caption_adversarial
            logs["train/caption_adv"] = caption_adversarial.detach()
        logs["train/g_loss"] = loss.detach()
        return Loss(loss, logs)

    def validation_metrics(
        self, images: torch.Tensor, tokens: torch.Tensor, fake: torch.Tensor, caption_logits: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """How often the discriminator ranks a real matching pair above a mismatched and a generated one.

        Args:
            images: Real images (B, 3, H, W); ``tokens`` (B, L) their captions.
            fake: Images generated for those captions (B, 3, H, W).
            caption_logits: A captioner's teacher-forced logits (B, L-1, V) on the real pairs.
        """
        d = self.discriminator
        _, sentence = self.text_encoder(tokens)
        text_embedding = d.embed_text(sentence)
        real = d.features(images)
        real_logits = d.score(real, text_embedding)
        fake_logits = d.score(d.features(fake), text_embedding)
        mismatched_logits = d.score(real, text_embedding.roll(1, 0))
        return {
            "match_acc": (real_logits > mismatched_logits).float().mean(),
            "real_vs_fake_acc": (real_logits > fake_logits).float().mean(),
            "caption_loss": losses.caption_cross_entropy(caption_logits, tokens, PAD_ID),
        }

    def binding_metrics(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        captioner: Captioner | None = None,
        fake: torch.Tensor | None = None,
    ) -> dict[str, tuple[torch.Tensor, int]]:
        """Who binds words to objects, per twin kind: critic, text encoder and captioner.

        For each real image (B, 3, H, W) whose caption (row of ``tokens`` (B, L)) has a binding twin
        of a kind (:func:`~m2gan.negatives.binding_twins`, from ``word_pairs``):

        * ``binding_acc/<kind>``: how often the discriminator scores the image's own caption above
          the twin (a tie counts half, so a bag of words scores 0.5);
        * ``twin_cosine/<kind>``: the cosine between the two captions' sentence vectors (1.0 for a
          text encoder blind to word order);
        * ``twin_distance/<kind>``: the caption–twin distance of the sentence vectors (what the
          generator is conditioned on) over the distance to another caption of the batch, as a ratio
          of means (0 for a bag of words; cosine can stay near 1 while the twins differ in a small subspace);
        * ``caption_binding/<kind>``: how often ``captioner`` (default: the trained one) finds the
          own caption likelier than the twin given the real image (ties half);
        * ``caption_binding_fake/<kind>``: the same given ``fake`` (B, 3, H, W), images drawn for
          ``tokens``, when given: whether the drawings read as their caption rather than its twin;
        * ``region_binding/<kind>`` and ``region_binding_fake/<kind>``, with a word-region head: how
          often its word-by-region similarity ranks the caption above the twin, on the real images and
          on ``fake``.

        Returns:
            ``{name: (mean over the rows with a twin, number of those rows)}``; kinds no row has are left out.
        """
        d, captioner = self.discriminator, captioner or self.captioner
        twins = binding_twins(tokens, len(SPECIAL_TOKENS), self.word_pairs)
        kinds = [kind for kind, (_, found) in twins.items() if found.any()]
        if not kinds:
            return {}
        texts = torch.cat([tokens, *(twins[kind][0] for kind in kinds)])
        all_words, sentences = self.text_encoder(texts)  # ((1 + K) * B, L, W), ((1 + K) * B, S)
        sentences, all_words = sentences.split(tokens.shape[0]), all_words.split(tokens.shape[0])
        (real, regions), fake_regions = d.features_and_regions(images), None
        if d.has_regions and fake is not None:
            fake_regions = d.features_and_regions(fake)[1]
        own_logits = d.score(real, d.embed_text(sentences[0]))  # (B,)
        other = (sentences[0] - sentences[0].roll(1, 0)).norm(dim=1)  # (B,) distance to another caption
        memories = {"caption_binding": captioner.encode(images)}
        if fake is not None:
            memories["caption_binding_fake"] = captioner.encode(fake)
        metrics = {}

        def region_match(words: torch.Tensor, text: torch.Tensor, image_regions: torch.Tensor) -> torch.Tensor:
            """(B,) word-region similarity of each caption (row of ``text``) to its own image only."""
            return losses.paired_word_region_similarity(d.embed_words(words), text == PAD_ID, image_regions)

        region_sets = {"region_binding": regions, "region_binding_fake": fake_regions} if d.has_regions else {}
        own_regions = {name: region_match(all_words[0], tokens, r) for name, r in region_sets.items() if r is not None}
        for k, (kind, sentence) in enumerate(zip(kinds, sentences[1:]), 1):
            found = twins[kind][1]
            count = int(found.sum())
            for name, own in own_regions.items():
                twin = region_match(all_words[k], twins[kind][0], region_sets[name])
                metrics[f"{name}/{kind}"] = (wins(own, twin)[found].mean(), count)
            twin_logits = d.score(real, d.embed_text(sentence))
            metrics[f"binding_acc/{kind}"] = (wins(own_logits, twin_logits)[found].mean(), count)
            metrics[f"twin_cosine/{kind}"] = (F.cosine_similarity(sentences[0], sentence, dim=1)[found].mean(), count)
            distance = (sentences[0] - sentence).norm(dim=1)
            metrics[f"twin_distance/{kind}"] = (distance[found].mean() / other[found].mean().clamp_min(1e-12), count)
            rows = found.nonzero().flatten()
            for name, memory in memories.items():
                own, twin = twin_likelihoods(captioner, memory, tokens, Twins(twins[kind][0][rows], rows))
                metrics[f"{name}/{kind}"] = (wins(own, twin).mean(), count)
        return metrics


def twin_likelihoods(
    captioner: Captioner, memory: torch.Tensor, tokens: torch.Tensor, twins: Twins
) -> tuple[torch.Tensor, torch.Tensor]:
    """A captioner's log-likelihoods (T,) of each twin's caption (a row of ``tokens`` (B, L)) and of the
    twin, given that caption's image tokens: the rows of ``memory`` (B, P, W) that ``captioner``
    encoded. Both are decoded in one call."""
    memory = memory[twins.rows].repeat(2, 1, 1)  # (2T, P, W)
    texts = torch.cat([tokens[twins.rows], twins.tokens])  # (2T, L)
    likelihood = losses.sequence_log_likelihood(captioner.decode(memory, texts[:, :-1]), texts, PAD_ID)
    return likelihood.chunk(2)


def wins(own: torch.Tensor, twin: torch.Tensor) -> torch.Tensor:
    """1 where ``own`` scores above ``twin``, 0.5 on a tie, else 0: a judge blind to the difference scores 0.5."""
    return (own > twin).float() + 0.5 * (own == twin).float()
