"""The M2GAN LightningModule: orchestrates networks, losses and optimisers.

Three players: a generator (text -> image), a captioner (image -> text), and a multimodal
discriminator with its text encoder, which judges (image, text) pairs. One training batch makes one
discriminator step (``d_step``) and, every ``n_critic`` batches, one step of generator and captioner
together (``g_step``) followed by an EMA update. Lightning's ``global_step`` counts *optimizer*
steps, so with ``n_critic=1`` one batch advances it by 2: ``--trainer.max_steps 2000`` means 1,000
batches. The default config therefore sets the run's length in batches through the epoch length
(``data.train_size / data.batch_size``) and leaves ``max_steps`` unset.

Where the text encoder gets its gradient decides whether conditioning is learned at all: trained
only to help the generator fool the discriminator, its features collapse and the generator ignores
the text. Here it is trained by the discriminator's losses (matching-aware adversarial and
image-text contrastive), and the generator sees its sentence vectors detached.

The captioner learns from real pairs (teacher-forced cross-entropy). Through the cycle loss it
also tells the generator whether its image can be read back as the prompt; for that term the
captioner is frozen, or the two would agree on a private code instead of drawing the text.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import pytorch_lightning as pl
import torch

from m2gan import decoding, losses, rng
from m2gan.ema import ema_beta, update_ema
from m2gan.images import ImageInput, prepare_images
from m2gan.negatives import swap_one_word
from m2gan.networks import Captioner, Discriminator, Generator, TextEncoder
from m2gan.networks.generator import check_resolution
from m2gan.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, CaptionTokenizer

TOKENIZER_KEY = "m2gan_tokenizer"
RNG_KEY = "m2gan_rng_states"


class CheckpointMismatch(ValueError):
    """A checkpoint that does not belong to this model or data configuration."""


class DivergenceError(RuntimeError):
    """Training produced non-finite losses or gradients for too many consecutive steps."""


class TextBatch(NamedTuple):
    """What the discriminator step hands the generator step about a batch's captions."""

    tokens: torch.Tensor
    """(B, L) token rows of the batch's captions."""
    sentence: torch.Tensor
    """(B, S) their sentence vectors, detached."""
    swapped_sentence: torch.Tensor | None
    """(B, S) sentence vectors of the word-swapped captions (None when ``swap_weight`` is 0)."""
    sampled_tokens: torch.Tensor | None
    """(B, L) the captioner's sampled captions of the real images (None unless the adversarial
    caption loss is on)."""


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s parameters record no gradient (gradients still flow through it)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class M2GAN(pl.LightningModule):
    """Text-conditioned GAN with a multimodal (image-text) discriminator.

    Args:
        resolution: Image side, a power of two from 32 to 256 (linked from ``data.resolution``).
        vocab_size: Tokenizer vocabulary size (linked from the data module).
        max_length: Tokens per caption (linked from the data module).
        noise_dim: Width of the generator's noise vector.
        text_width: Width of word embeddings and the text transformer.
        sentence_dim: Width of the sentence vector that conditions generator and discriminator.
        text_layers: Transformer layers of the text encoder.
        g_channels: Generator channels at full resolution (doubling as the side halves).
        d_channels: Discriminator channels at full resolution (doubling as the side halves).
        max_channels: Cap on channels of both networks at low resolution.
        embed_dim: Width of the discriminator's joint image-text embedding.
        adversarial_loss: ``"hinge"`` or ``"non_saturating"``.
        mismatch_weight: Weight of (real image, another sample's caption) among the
            discriminator's fakes (the matching-aware loss); 0 turns it off.
        swap_weight: Weight of (real image, its caption with one word swapped) among the
            discriminator's fakes; when positive, the swapped caption is also a hard negative of
            both contrastive losses. These negatives make every word matter (``m2gan.negatives``).
        contrastive_weight_d: Weight of the image-text contrastive loss on real pairs, trained into
            the discriminator and text encoder; 0 turns it off.
        contrastive_weight_g: Weight of the contrastive loss on generated images, trained into the
            generator (its images must be recognisable as their caption among the batch's); 0 = off.
        contrastive_temperature: Temperature of both contrastive losses.
        gradient_penalty: ``"r1"`` (on real images), ``"ma_gp"`` (DF-GAN's matching-aware penalty on
            real images and sentences) or ``"none"``.
        gp_weight: R1's gamma, or MA-GP's coefficient.
        gp_interval: Lazy regularisation: apply the penalty every this many discriminator steps,
            scaled by the interval (StyleGAN2), which makes it affordable on a CPU.
        n_critic: Discriminator steps per generator step.
        lr_g: Generator learning rate.
        lr_d: Discriminator (and text encoder) learning rate.
        betas: Adam betas of both optimisers.
        grad_clip: Clip each network's gradient norm to this value before its step; None = off.
            (Under ``16-mixed`` precision the clipped gradients are still loss-scaled; prefer
            ``bf16-mixed``, which has no scaler.)
        max_bad_steps: Divergence guard: a step whose loss or gradients are not finite is skipped
            (nothing reaches the weights or the optimizer state) and counted
            (``train/skipped_steps``); after this many consecutive skipped steps of one network,
            training stops with :class:`DivergenceError` naming the step and the loss.
        captioner_width: Width of the captioner's image tokens, word embeddings and decoder.
        captioner_layers: Transformer decoder layers of the captioner.
        captioner_channels: Channels of the captioner's image encoder at full resolution.
        caption_weight: Weight of the captioner's teacher-forced cross-entropy on real pairs;
            0 leaves the captioner untrained (and then the cycle loss must be off too).
        caption_label_smoothing: Label smoothing of that cross-entropy.
        cycle_weight: Weight of the cycle (redescription) loss trained into the generator: the
            frozen captioner's cross-entropy of the prompt given the generated image; 0 = off.
        caption_adversarial_weight: Weight of the adversarial caption loss: the discriminator also
            counts (real image, sampled caption) as fake, and the captioner learns to fool it
            through straight-through one-hot tokens; 0 = off.
        caption_temperature: Softmax temperature of the straight-through relaxation.
        lr_captioner: Captioner learning rate.
        captioner_betas: Adam betas of the captioner (a language model wants momentum, unlike GANs).
        ema_half_life_images: Half-life of the EMA generator's (and captioner's) weights, in training images.
        ema_rampup: Cap the EMA half-life at this fraction of the images seen so far; None = off.
        channels_last: Keep convolution weights in channels-last (NHWC) memory layout, which
            oneDNN on CPUs (and tensor cores on GPUs) run faster: the default config's training
            batch ran 1.21× (16-channel discriminator) and 1.32× (32 channels) faster than with
            the contiguous layout on a 2-core CPU (``benchmarks/efficiency.py``). Numerics differ
            from the contiguous layout only by floating-point summation order.
    """

    def __init__(
        self,
        resolution: int = 32,
        vocab_size: int = 64,
        max_length: int = 24,
        noise_dim: int = 64,
        text_width: int = 64,
        sentence_dim: int = 64,
        text_layers: int = 1,
        g_channels: int = 16,
        d_channels: int = 16,
        max_channels: int = 64,
        embed_dim: int = 64,
        adversarial_loss: losses.AdversarialLoss = "hinge",
        mismatch_weight: float = 0.5,
        swap_weight: float = 0.5,
        contrastive_weight_d: float = 1.0,
        contrastive_weight_g: float = 1.0,
        contrastive_temperature: float = 0.1,
        gradient_penalty: Literal["r1", "ma_gp", "none"] = "r1",
        gp_weight: float = 0.1,
        gp_interval: int = 4,
        n_critic: int = 1,
        lr_g: float = 1e-3,
        lr_d: float = 1e-3,
        betas: tuple[float, float] = (0.0, 0.99),
        grad_clip: float | None = None,
        max_bad_steps: int = 20,
        captioner_width: int = 64,
        captioner_layers: int = 2,
        captioner_channels: int = 16,
        caption_weight: float = 1.0,
        caption_label_smoothing: float = 0.0,
        cycle_weight: float = 1.0,
        caption_adversarial_weight: float = 0.0,
        caption_temperature: float = 1.0,
        lr_captioner: float = 3e-3,
        captioner_betas: tuple[float, float] = (0.9, 0.99),
        ema_half_life_images: float = 10_000.0,
        ema_rampup: float | None = 0.05,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        check_resolution(resolution)
        positive = (
            ("lr_g", lr_g),
            ("lr_d", lr_d),
            ("lr_captioner", lr_captioner),
            ("contrastive_temperature", contrastive_temperature),
            ("caption_temperature", caption_temperature),
        )
        for name, value in positive:
            if value <= 0:
                raise ValueError(f"model.{name} must be positive, got {value}")
        integers = (("n_critic", n_critic), ("gp_interval", gp_interval), ("vocab_size", vocab_size))
        for name, value in (*integers, ("max_bad_steps", max_bad_steps)):
            if value < 1:
                raise ValueError(f"model.{name} must be at least 1, got {value}")
        if cycle_weight > 0 and caption_weight <= 0:
            raise ValueError(
                "model.cycle_weight > 0 needs model.caption_weight > 0: an untrained captioner cannot judge"
            )
        self.save_hyperparameters()
        self.automatic_optimization = False
        self._rng_to_restore: dict | None = None
        self._train_logs: dict[str, torch.Tensor] = {}  # written by write_train_logs

        self.text_encoder = TextEncoder(vocab_size, max_length, text_width, sentence_dim, text_layers)
        self.generator = Generator(resolution, noise_dim, sentence_dim, g_channels, max_channels)
        self.discriminator = Discriminator(resolution, sentence_dim, d_channels, max_channels, embed_dim)
        self.captioner = Captioner(
            resolution,
            vocab_size,
            max_length,
            width=captioner_width,
            num_layers=captioner_layers,
            base_channels=captioner_channels,
            max_channels=max_channels,
        )
        if channels_last:  # before the EMA copies, which inherit the layout
            self.to(memory_format=torch.channels_last)
        # The sampling pipeline: EMA copies of generator, text encoder and captioner, never trained directly.
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.text_encoder_ema = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.captioner_ema = copy.deepcopy(self.captioner).requires_grad_(False)
        # Counters live in buffers so they travel in checkpoints (lazy-penalty phase, EMA ramp-up).
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("g_steps", torch.zeros((), dtype=torch.long))
        # Divergence guard: all skipped steps, and the current run of consecutive ones per network.
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("bad_run", torch.zeros(2, dtype=torch.long))  # (discriminator, generator)
        self.tokenizer: CaptionTokenizer | None = None
        # True when loaded from an export, which holds only the EMA networks.
        self.ema_only = False

    # ------------------------------------------------------------------ setup and checkpoints

    def set_tokenizer(self, tokenizer: CaptionTokenizer) -> None:
        """Attach the tokenizer the token ids come from; it is saved inside every checkpoint."""
        if tokenizer.vocab_size != self.hparams.vocab_size or tokenizer.max_length != self.hparams.max_length:
            raise ValueError(
                f"tokenizer (vocab_size={tokenizer.vocab_size}, max_length={tokenizer.max_length}) does not fit "
                f"this model (vocab_size={self.hparams.vocab_size}, max_length={self.hparams.max_length})"
            )
        self.tokenizer = tokenizer

    def setup(self, stage: str) -> None:
        # The data module owns the tokenizer it fitted on the training captions.
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizer is not None:
            checkpoint[TOKENIZER_KEY] = self.tokenizer.to_json()
        trainer = self._trainer
        if trainer is not None and trainer.training:  # between two training batches: the next one draws from here
            checkpoint[RNG_KEY] = rng.capture()

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            rng.restore(self._rng_to_restore)
            self._rng_to_restore = None

    def add_missing_counters(self, state_dict: dict) -> None:
        """Give a state dict written before the divergence-guard counters existed those counters at zero."""
        for name in ("skipped_steps", "bad_run"):
            state_dict.setdefault(name, torch.zeros_like(getattr(self, name)))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.add_missing_counters(checkpoint.setdefault("state_dict", {}))
        # Restored right before the next training batch, not now: Lightning draws from the global
        # RNG while it rebuilds the data loaders, which the uninterrupted run did at epoch start.
        self._rng_to_restore = checkpoint.get(RNG_KEY)
        if TOKENIZER_KEY not in checkpoint:
            raise CheckpointMismatch("checkpoint holds no tokenizer: it was not written by M2GAN")
        try:
            saved = CaptionTokenizer.from_json(checkpoint[TOKENIZER_KEY])
        except Exception as error:  # noqa: BLE001 - json and tokenizers raise their own types
            raise CheckpointMismatch(f"the checkpoint's tokenizer is unreadable: {error}") from None
        if self.tokenizer is not None and saved != self.tokenizer:
            raise CheckpointMismatch(
                "the checkpoint's tokenizer differs from the data module's: it was trained on other data or "
                "another data config (max_length, vocabulary); resume it with the config it was trained with"
            )
        try:
            self.set_tokenizer(saved)
        except ValueError as error:
            raise CheckpointMismatch(f"{error}: the checkpoint was trained with another config") from None

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> M2GAN:
        """Load a training checkpoint or an export folder, ready for :meth:`generate` (eval mode).

        Same as :func:`m2gan.load`: checkpoints are unpickled with ``weights_only=True`` only, and
        bad files raise one clear error (see :func:`m2gan.export.load`).
        """
        from m2gan.export import load  # the export module builds on this class

        return load(path, map_location)

    def configure_optimizers(self):
        hp = self.hparams
        # Generator and captioner are the two generating players: they step together in g_step.
        opt_g = torch.optim.Adam(
            [
                {"params": self.generator.parameters()},
                {"params": self.captioner.parameters(), "lr": hp.lr_captioner, "betas": tuple(hp.captioner_betas)},
            ],
            lr=hp.lr_g,
            betas=tuple(hp.betas),
        )
        d_params = [*self.discriminator.parameters(), *self.text_encoder.parameters()]
        opt_d = torch.optim.Adam(d_params, lr=hp.lr_d, betas=tuple(hp.betas))
        return opt_g, opt_d

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        text = self.d_step(batch["image"], batch["tokens"], opt_d)
        if batch_idx % self.hparams.n_critic == 0:
            self.g_step(batch["image"], text, opt_g)
            # EMA half-lives count images of the whole step: every process's batch.
            self.update_ema(batch_size=batch["image"].shape[0] * self.trainer.world_size)
        step = int(self.d_steps)
        if step % self.trainer.log_every_n_steps == 0 or step == 1:
            self.show_losses()
        if step % self.trainer.log_every_n_steps == 0:
            self.write_train_logs()

    def show_losses(self) -> None:
        """Put the latest ``d_loss`` and ``g_loss`` on the progress bar.

        Called after the first batch, then every ``trainer.log_every_n_steps`` batches as the loggers
        get their metrics; not every batch, because a ``self.log`` call costs about a millisecond of
        Lightning bookkeeping on a CPU: the two cost about 2% of a default training batch
        (``benchmarks/overhead.py``).
        """
        for name in ("d_loss", "g_loss"):
            if f"train/{name}" in self._train_logs:
                self.log(name, self._train_logs[f"train/{name}"], prog_bar=True, logger=False)

    def write_train_logs(self) -> None:
        """Send the latest training metrics (``train/*``) to every logger, at step = batches trained.

        Training metrics bypass ``self.log``: its bookkeeping costs about a millisecond per key on
        a CPU, which made 14 keys a batch 10% of a default training batch
        (``benchmarks/overhead.py``). They are written every ``trainer.log_every_n_steps`` batches
        and at the end of training, as ``self.log`` would; the values are the latest batch's. So
        they are not in ``trainer.callback_metrics``: monitor ``val/*`` metrics in callbacks.
        """
        if self._train_logs:
            metrics = {name: float(value) for name, value in self._train_logs.items()}
            for logger in self.loggers:  # Lightning's loggers write on rank zero only
                logger.log_metrics(metrics, step=int(self.d_steps))
            self._train_logs.clear()

    def on_train_end(self) -> None:
        self.write_train_logs()

    @property
    def has_gradient_penalty(self) -> bool:
        """Whether the config applies a gradient penalty at all (on every ``gp_interval``-th D step)."""
        return self.hparams.gradient_penalty != "none" and self.hparams.gp_weight > 0

    def penalty_due(self) -> bool:
        """Whether the next discriminator step applies the (lazy) gradient penalty."""
        return self.has_gradient_penalty and int(self.d_steps) % self.hparams.gp_interval == 0

    def d_step(self, images: torch.Tensor, tokens: torch.Tensor, opt_d) -> TextBatch:
        """One discriminator (and text encoder) update; returns what the generator step needs."""
        hp = self.hparams
        batch_size = images.shape[0]
        lazy_penalty = self.penalty_due()
        use_swaps = hp.swap_weight > 0
        sampled_tokens = None
        if hp.caption_adversarial_weight > 0:
            with torch.no_grad():
                sampled_tokens = self._sample_captions(self.captioner, images, temperature=1.0)
        with self.toggled_optimizer(opt_d):
            texts = [tokens]
            if use_swaps:
                texts.append(swap_one_word(tokens, len(SPECIAL_TOKENS)))
            if sampled_tokens is not None:
                texts.append(sampled_tokens)
            _, sentences = self.text_encoder(torch.cat(texts))  # (B * len(texts), S)
            sentences = sentences.split(batch_size)
            sentence = sentences[0]
            with torch.no_grad():
                fake = self.generator(self.noise(batch_size), sentence.detach())  # (B, 3, H, W)
            if lazy_penalty:
                images = images.detach().requires_grad_(True)
            embedding, unconditional = self.discriminator.features(torch.cat([images, fake]))  # (2B, E), (2B,)
            real, fake = (
                (embedding[:batch_size], unconditional[:batch_size]),
                (embedding[batch_size:], unconditional[batch_size:]),
            )
            text_embedding = self.discriminator.embed_text(sentence)  # (B, E)
            swapped_embedding = self.discriminator.embed_text(sentences[1]) if use_swaps else None
            real_logits = self.discriminator.score(real, text_embedding)
            fake_logits = self.discriminator.score(fake, text_embedding)
            # Each image paired with the previous sample's caption: the matching-aware negatives.
            mismatched_logits = self.discriminator.score(real, text_embedding.roll(1, dims=0))
            negatives = [(fake_logits, 1.0), (mismatched_logits, hp.mismatch_weight)]
            if use_swaps:
                swapped_logits = self.discriminator.score(real, swapped_embedding)
                negatives.append((swapped_logits, hp.swap_weight))
            if sampled_tokens is not None:
                sampled_logits = self.discriminator.score(real, self.discriminator.embed_text(sentences[-1]))
                negatives.append((sampled_logits, hp.caption_adversarial_weight))
            loss = losses.d_adversarial(real_logits, negatives, hp.adversarial_loss)
            logs = {"train/d_adv": loss.detach()}
            if hp.contrastive_weight_d > 0:
                contrastive = losses.contrastive(real[0], text_embedding, hp.contrastive_temperature, swapped_embedding)
                loss = loss + hp.contrastive_weight_d * contrastive
                logs["train/d_contrastive"] = contrastive.detach()
            if lazy_penalty:
                if hp.gradient_penalty == "r1":
                    penalty = 0.5 * hp.gp_weight * losses.r1_penalty(real_logits, images)
                else:
                    penalty = hp.gp_weight * losses.matching_aware_gradient_penalty(real_logits, images, sentence)
                loss = loss + hp.gp_interval * penalty
                logs["train/gradient_penalty"] = penalty.detach()
            self._optimizer_step(opt_d, loss, "discriminator")
        self.d_steps += 1
        with torch.no_grad():
            logs["train/d_loss"] = loss.detach()
            logs["train/real_logit"] = real_logits.mean()
            logs["train/fake_logit"] = fake_logits.mean()
            logs["train/match_acc"] = (real_logits > mismatched_logits).float().mean()
            if use_swaps:
                logs["train/swap_acc"] = (real_logits > swapped_logits).float().mean()
        self._train_logs.update(logs)
        swapped_sentence = sentences[1].detach() if use_swaps else None
        return TextBatch(tokens, sentence.detach(), swapped_sentence, sampled_tokens)

    def g_step(self, images: torch.Tensor, text: TextBatch, opt_g) -> None:
        """One update of generator and captioner for a batch of real ``images`` and their ``text``.

        The generator draws the batch's captions (adversarial, contrastive and cycle losses); the
        captioner describes the real images (cross-entropy and, if on, adversarial caption loss).
        """
        hp = self.hparams
        sentence = text.sentence
        with self.toggled_optimizer(opt_g):
            fake = self.generator(self.noise(sentence.shape[0]), sentence)  # (B, 3, H, W)
            fake_features = self.discriminator.features(fake)
            text_embedding = self.discriminator.embed_text(sentence)
            loss = losses.g_adversarial(self.discriminator.score(fake_features, text_embedding), hp.adversarial_loss)
            logs = {"train/g_adv": loss.detach()}
            if hp.contrastive_weight_g > 0:
                swapped = text.swapped_sentence
                hard = self.discriminator.embed_text(swapped) if swapped is not None else None
                contrastive = losses.contrastive(fake_features[0], text_embedding, hp.contrastive_temperature, hard)
                loss = loss + hp.contrastive_weight_g * contrastive
                logs["train/g_contrastive"] = contrastive.detach()
            if hp.cycle_weight > 0:
                with frozen(self.captioner):
                    cycle = losses.caption_cross_entropy(self.captioner(fake, text.tokens), text.tokens, PAD_ID)
                loss = loss + hp.cycle_weight * cycle
                logs["train/cycle"] = cycle.detach()
            use_real_captions = hp.caption_weight > 0 or text.sampled_tokens is not None
            # Both real-image terms read the same image tokens: encode the images once.
            memory = self.captioner.encode(images) if use_real_captions else None  # (B, P, W)
            if hp.caption_weight > 0:
                logits = self.captioner.decode(memory, text.tokens[:, :-1])  # (B, L-1, V)
                caption = losses.caption_cross_entropy(logits, text.tokens, PAD_ID, hp.caption_label_smoothing)
                loss = loss + hp.caption_weight * caption
                logs["train/caption"] = caption.detach()
            if text.sampled_tokens is not None:
                relaxed = decoding.straight_through(self.captioner, memory, text.sampled_tokens, hp.caption_temperature)
                _, sampled_sentence = self.text_encoder(relaxed)  # frozen here: trained by d_step
                with torch.no_grad():
                    real_features = self.discriminator.features(images)
                sampled_logits = self.discriminator.score(
                    real_features, self.discriminator.embed_text(sampled_sentence)
                )
                caption_adversarial = losses.g_adversarial(sampled_logits, hp.adversarial_loss)
                loss = loss + hp.caption_adversarial_weight * caption_adversarial
                logs["train/caption_adv"] = caption_adversarial.detach()
            self._optimizer_step(opt_g, loss, "generator")
        self.g_steps += 1
        logs["train/g_loss"] = loss.detach()
        self._train_logs.update(logs)

    def update_ema(self, batch_size: int) -> None:
        """Move the EMA generator, text encoder and captioner towards the trained ones."""
        hp = self.hparams
        beta = ema_beta(batch_size, hp.ema_half_life_images, int(self.g_steps) * batch_size, hp.ema_rampup)
        update_ema(self.generator_ema, self.generator, beta)
        update_ema(self.text_encoder_ema, self.text_encoder, beta)
        update_ema(self.captioner_ema, self.captioner, beta)

    def _optimizer_step(self, optimizer, loss: torch.Tensor, player: str) -> None:
        """Backward, clip and step — unless the loss or a gradient is not finite (then skip and count)."""
        optimizer.zero_grad(set_to_none=True)
        # Backward runs even for a non-finite loss: under DDP every rank must join the gradient
        # all-reduce, and the reduced gradients then carry the NaN to every rank alike, so all
        # ranks take the same decision below.
        self.manual_backward(loss)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # One fused foreach norm instead of an isfinite kernel per tensor: 3.5-5.3 ms -> 1.0 ms a
        # batch on 2 CPU cores. The norm is NaN/inf when an entry is (or, harmlessly, when a
        # gradient is so large, ~1e19, that its square overflows: such a step is skipped too).
        finite = torch.isfinite(loss) & torch.isfinite(torch.nn.utils.get_total_norm(grads))
        which = 0 if player == "discriminator" else 1
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.bad_run[which] += 1
            self._train_logs["train/skipped_steps"] = self.skipped_steps.float()
            if int(self.bad_run[which]) >= self.hparams.max_bad_steps:
                raise DivergenceError(
                    f"training diverged: {int(self.bad_run[which])} consecutive {player} steps with a non-finite "
                    f"loss or gradient, the last at batch {int(self.d_steps)} (loss {loss.item()}); "
                    "the last checkpoint holds the weights from before it"
                )
            return
        self.bad_run[which] = 0
        if self.hparams.grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def noise(
        self, batch_size: int, generator: torch.Generator | None = None, truncation: float | None = None
    ) -> torch.Tensor:
        """Standard normal noise (B, noise_dim) on the model's device, truncated to ``±truncation`` if given."""
        if truncation is None:
            z = torch.randn(batch_size, self.hparams.noise_dim, generator=generator)
        else:
            if truncation <= 0:
                raise ValueError(f"truncation must be positive, got {truncation}")
            # Inverse-CDF sampling of the truncated normal: exact, one draw, reproducible with a seed.
            edge = torch.special.ndtr(torch.tensor(-float(truncation), dtype=torch.float64))
            u = torch.rand(batch_size, self.hparams.noise_dim, generator=generator, dtype=torch.float64)
            z = torch.special.ndtri(edge + u * (1 - 2 * edge)).float()
        return z.to(self.device)

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: dict, split: str) -> None:
        """Log how often the discriminator ranks a real matching pair above a mismatched and a generated one."""
        images, tokens = batch["image"], batch["tokens"]
        _, sentence = self.text_encoder(tokens)
        _, sentence_ema = self.text_encoder_ema(tokens)
        # Noise seeded by the batch's first sample: validation never draws from the training RNG
        # (exact resume) and gives the same numbers in every run and under any number of processes.
        seed = int(batch["index"][0]) if "index" in batch else 0
        fake = self.generator_ema(self.noise(images.shape[0], torch.Generator().manual_seed(seed)), sentence_ema)
        text_embedding = self.discriminator.embed_text(sentence)
        real = self.discriminator.features(images)
        real_logits = self.discriminator.score(real, text_embedding)
        fake_logits = self.discriminator.score(self.discriminator.features(fake), text_embedding)
        mismatched_logits = self.discriminator.score(real, text_embedding.roll(1, 0))
        caption_logits = self.captioner_ema(images, tokens)
        self.log_dict(
            {
                f"{split}/match_acc": (real_logits > mismatched_logits).float().mean(),
                f"{split}/real_vs_fake_acc": (real_logits > fake_logits).float().mean(),
                f"{split}/caption_loss": losses.caption_cross_entropy(caption_logits, tokens, PAD_ID),
            },
            batch_size=images.shape[0],
        )

    # ------------------------------------------------------------------ sampling

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        num_images: int = 1,
        seed: int = 0,
        truncation: float | None = None,
        ema: bool = True,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Draw images for text prompts.

        Args:
            prompts: Captions to draw; none may be empty.
            num_images: Images per prompt.
            seed: Noise seed. All noise of a call is drawn at once on the CPU, so the same seed
                gives the same images for any ``batch_size`` (on the same device).
            truncation: Truncation trick (BigGAN, DF-GAN): noise drawn from a normal truncated to
                ``[-truncation, truncation]`` — lower values trade variety for fidelity; None = off.
            ema: Use the EMA generator and text encoder (the default); False uses the trained ones.
            batch_size: Images per forward pass; None = all at once.

        Returns:
            uint8 tensor (len(prompts) * num_images, 3, H, W) on the CPU, the images of prompt ``i``
            at rows ``i * num_images … (i + 1) * num_images - 1``.
        """
        tokens = self.encode_prompts(prompts)
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not ema:
            self._require_trained_weights()
        text_encoder = self.text_encoder_ema if ema else self.text_encoder
        _, sentence = text_encoder(tokens.to(self.device))
        sentence = sentence.repeat_interleave(num_images, dim=0)  # (N, S)
        z = self.noise(sentence.shape[0], torch.Generator().manual_seed(seed), truncation)
        return self._draw(self.generator_ema if ema else self.generator, z, sentence, batch_size)

    @staticmethod
    def _draw(
        generator: torch.nn.Module, z: torch.Tensor, sentence: torch.Tensor, batch_size: int | None
    ) -> torch.Tensor:
        """uint8 CPU images (N, 3, H, W) for noise (N, noise_dim) and sentence vectors (N, S)."""
        step = batch_size or z.shape[0]
        chunks = [generator(z[i : i + step], sentence[i : i + step]) for i in range(0, z.shape[0], step)]
        images = chunks[0] if len(chunks) == 1 else torch.cat(chunks)  # (N, 3, H, W) in [-1, 1]
        # In place: sampling runs under inference mode, and each temporary would cost a full pass.
        images = images.float().add_(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).cpu()
        return images.contiguous()  # a channels-last generator's output is NHWC in memory

    @torch.inference_mode()
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Draw one image per row of a prediction batch (``prompt``, and ``seed`` of the row's noise).

        Used by ``python train.py predict``: each row's noise comes from its own seed, so an image
        does not depend on the batch it was drawn in. Returns the batch with ``images`` (uint8) added.
        """
        _, sentence = self.text_encoder_ema(self.encode_prompts(batch["prompt"]).to(self.device))
        z = torch.cat([self.noise(1, torch.Generator().manual_seed(int(seed))) for seed in batch["seed"]])
        return {**batch, "images": self._draw(self.generator_ema, z, sentence, batch_size=None)}

    def _require_trained_weights(self) -> None:
        if self.ema_only:
            raise ValueError("this model was loaded from an export, which holds only the EMA networks: use ema=True")

    @torch.inference_mode()
    def caption(
        self,
        images: torch.Tensor | Sequence[ImageInput] | ImageInput,
        num_beams: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
        length_penalty: float = 1.0,
        ema: bool = True,
    ) -> list[str]:
        """Describe images with the EMA captioner.

        Args:
            images: A tensor (N, 3, H, W) or (3, H, W), uint8 in [0, 255] or float in [-1, 1]
                (resized to the model's resolution), or image files / PIL images (converted to RGB,
                shorter side resized, centre-cropped).
            num_beams: 1 decodes greedily (or samples, see ``temperature``); more runs beam search.
            temperature: With ``num_beams=1``, a positive value samples tokens at this temperature.
            seed: Seed of the sampling (``temperature > 0``).
            length_penalty: Beam search ranks captions by log-probability / length ** this.
            ema: Use the EMA captioner (the default); False uses the trained one.

        Returns:
            One caption per image.
        """
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer: load it from a checkpoint or call set_tokenizer()")
        if num_beams > 1 and temperature > 0:
            raise ValueError("choose beam search (num_beams > 1) or sampling (temperature > 0), not both")
        pixels = prepare_images(images, self.hparams.resolution).to(self.device)
        if not ema:
            self._require_trained_weights()
        captioner = self.captioner_ema if ema else self.captioner
        if num_beams > 1:
            tokens = decoding.beam_search(
                captioner, pixels, BOS_ID, EOS_ID, PAD_ID, num_beams=num_beams, length_penalty=length_penalty
            )
        else:
            generator = torch.Generator(self.device).manual_seed(seed)
            tokens = self._sample_captions(captioner, pixels, temperature, generator)
        return [self.tokenizer.decode(row) for row in tokens.cpu()]

    def _sample_captions(
        self, captioner: Captioner, images: torch.Tensor, temperature: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return decoding.sample(captioner, images, BOS_ID, EOS_ID, PAD_ID, temperature=temperature, generator=generator)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Validate prompts and turn them into token ids (B, L); warn once about unknown words.

        ``L`` is the longest prompt's length (at most ``max_length``): trailing columns that are
        padding in every row are dropped, which the text encoder's padding mask makes exact and
        saves it work.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("no prompts given")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one word")
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer: load it from a checkpoint or call set_tokenizer()")
        tokens = self.tokenizer.encode(prompts)
        if (tokens == UNK_ID).any():  # only then is it worth re-reading the prompts word by word
            unknown = sorted({w for p in prompts for w in self.tokenizer.unknown_words(p)})
            warnings.warn(f"words not in the training vocabulary are ignored as [UNK]: {unknown}", stacklevel=3)
        used = (tokens != PAD_ID).any(dim=0).nonzero()
        return tokens[:, : int(used.max()) + 1]
