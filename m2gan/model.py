"""The M2GAN LightningModule: orchestrates networks, losses and optimisers.

One training batch makes one discriminator step (``d_step``) and, every ``n_critic`` batches, one
generator step (``g_step``) followed by an EMA update. Lightning's ``global_step`` counts *optimizer*
steps, so with ``n_critic=1`` one batch advances it by 2: ``--trainer.max_steps 2000`` means 1,000
batches. The default config therefore sets the run's length in batches through the epoch length
(``data.train_size / data.batch_size``) and leaves ``max_steps`` unset.

Where the text encoder gets its gradient decides whether conditioning is learned at all: trained
only to help the generator fool the discriminator, its features collapse and the generator ignores
the text. Here it is trained by the discriminator's losses (matching-aware adversarial and
image-text contrastive), and the generator sees its sentence vectors detached.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from typing import Literal

import pytorch_lightning as pl
import torch

from m2gan import losses
from m2gan.ema import ema_beta, update_ema
from m2gan.negatives import swap_one_word
from m2gan.networks import Discriminator, Generator, TextEncoder
from m2gan.networks.generator import check_resolution
from m2gan.tokenizer import SPECIAL_TOKENS, CaptionTokenizer

TOKENIZER_KEY = "m2gan_tokenizer"


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
        ema_half_life_images: Half-life of the EMA generator's weights, in training images.
        ema_rampup: Cap the EMA half-life at this fraction of the images seen so far; None = off.
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
        ema_half_life_images: float = 10_000.0,
        ema_rampup: float | None = 0.05,
    ) -> None:
        super().__init__()
        check_resolution(resolution)
        for name, value in (("lr_g", lr_g), ("lr_d", lr_d), ("contrastive_temperature", contrastive_temperature)):
            if value <= 0:
                raise ValueError(f"model.{name} must be positive, got {value}")
        for name, value in (("n_critic", n_critic), ("gp_interval", gp_interval), ("vocab_size", vocab_size)):
            if value < 1:
                raise ValueError(f"model.{name} must be at least 1, got {value}")
        self.save_hyperparameters()
        self.automatic_optimization = False

        self.text_encoder = TextEncoder(vocab_size, max_length, text_width, sentence_dim, text_layers)
        self.generator = Generator(resolution, noise_dim, sentence_dim, g_channels, max_channels)
        self.discriminator = Discriminator(resolution, sentence_dim, d_channels, max_channels, embed_dim)
        # The sampling pipeline: EMA copies of generator and text encoder, never trained directly.
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.text_encoder_ema = copy.deepcopy(self.text_encoder).requires_grad_(False)
        # Counters live in buffers so they travel in checkpoints (lazy-penalty phase, EMA ramp-up).
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("g_steps", torch.zeros((), dtype=torch.long))
        self.tokenizer: CaptionTokenizer | None = None

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

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if TOKENIZER_KEY not in checkpoint:
            raise ValueError("checkpoint holds no tokenizer: it was not written by M2GAN")
        saved = CaptionTokenizer.from_json(checkpoint[TOKENIZER_KEY])
        if self.tokenizer is not None and saved != self.tokenizer:
            raise ValueError(
                "the checkpoint's tokenizer differs from the data module's: it was trained on other data or "
                "another data config (max_length, vocabulary); resume it with the config it was trained with"
            )
        self.set_tokenizer(saved)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> M2GAN:
        """Load a checkpoint written by training, ready for :meth:`generate` (eval mode).

        Only tensors and plain containers are unpickled (``weights_only=True``).
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)
        return model.eval()

    def configure_optimizers(self):
        betas = tuple(self.hparams.betas)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr_g, betas=betas)
        d_params = [*self.discriminator.parameters(), *self.text_encoder.parameters()]
        opt_d = torch.optim.Adam(d_params, lr=self.hparams.lr_d, betas=betas)
        return opt_g, opt_d

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        sentence, swapped_sentence = self.d_step(batch["image"], batch["tokens"], opt_d)
        if batch_idx % self.hparams.n_critic == 0:
            self.g_step(sentence, swapped_sentence, opt_g)
            self.update_ema(batch_size=sentence.shape[0])

    def d_step(self, images: torch.Tensor, tokens: torch.Tensor, opt_d) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One discriminator (and text encoder) update.

        Returns the batch's sentence vectors and those of its word-swapped captions (None when
        ``swap_weight`` is 0), detached, for the generator step.
        """
        hp = self.hparams
        batch_size = images.shape[0]
        lazy_penalty = hp.gradient_penalty != "none" and hp.gp_weight > 0 and int(self.d_steps) % hp.gp_interval == 0
        use_swaps = hp.swap_weight > 0
        with self.toggled_optimizer(opt_d):
            if use_swaps:
                tokens = torch.cat([tokens, swap_one_word(tokens, len(SPECIAL_TOKENS))])
            _, sentences = self.text_encoder(tokens)  # (B or 2B, S)
            sentence = sentences[:batch_size]
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
            swapped_embedding = self.discriminator.embed_text(sentences[batch_size:]) if use_swaps else None
            real_logits = self.discriminator.score(real, text_embedding)
            fake_logits = self.discriminator.score(fake, text_embedding)
            # Each image paired with the previous sample's caption: the matching-aware negatives.
            mismatched_logits = self.discriminator.score(real, text_embedding.roll(1, dims=0))
            negatives = [(fake_logits, 1.0), (mismatched_logits, hp.mismatch_weight)]
            if use_swaps:
                swapped_logits = self.discriminator.score(real, swapped_embedding)
                negatives.append((swapped_logits, hp.swap_weight))
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
            self._optimizer_step(opt_d, loss)
        self.d_steps += 1
        with torch.no_grad():
            logs["train/d_loss"] = loss.detach()
            logs["train/real_logit"] = real_logits.mean()
            logs["train/fake_logit"] = fake_logits.mean()
            logs["train/match_acc"] = (real_logits > mismatched_logits).float().mean()
            if use_swaps:
                logs["train/swap_acc"] = (real_logits > swapped_logits).float().mean()
        self.log_dict(logs, prog_bar=False)
        self.log("d_loss", loss.detach(), prog_bar=True, logger=False)
        swapped_sentence = sentences[batch_size:].detach() if use_swaps else None
        return sentence.detach(), swapped_sentence

    def g_step(self, sentence: torch.Tensor, swapped_sentence: torch.Tensor | None, opt_g) -> None:
        """One generator update for the batch's (detached) sentence vectors.

        ``swapped_sentence`` (or None) holds the word-swapped captions' vectors: hard negatives of
        the generator's contrastive loss.
        """
        hp = self.hparams
        with self.toggled_optimizer(opt_g):
            fake = self.generator(self.noise(sentence.shape[0]), sentence)  # (B, 3, H, W)
            fake_features = self.discriminator.features(fake)
            text_embedding = self.discriminator.embed_text(sentence)
            loss = losses.g_adversarial(self.discriminator.score(fake_features, text_embedding), hp.adversarial_loss)
            logs = {"train/g_adv": loss.detach()}
            if hp.contrastive_weight_g > 0:
                hard = self.discriminator.embed_text(swapped_sentence) if swapped_sentence is not None else None
                contrastive = losses.contrastive(fake_features[0], text_embedding, hp.contrastive_temperature, hard)
                loss = loss + hp.contrastive_weight_g * contrastive
                logs["train/g_contrastive"] = contrastive.detach()
            self._optimizer_step(opt_g, loss)
        self.g_steps += 1
        logs["train/g_loss"] = loss.detach()
        self.log_dict(logs, prog_bar=False)
        self.log("g_loss", loss.detach(), prog_bar=True, logger=False)

    def update_ema(self, batch_size: int) -> None:
        """Move the EMA generator and text encoder towards the trained ones."""
        hp = self.hparams
        beta = ema_beta(batch_size, hp.ema_half_life_images, int(self.g_steps) * batch_size, hp.ema_rampup)
        update_ema(self.generator_ema, self.generator, beta)
        update_ema(self.text_encoder_ema, self.text_encoder, beta)

    def _optimizer_step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.hparams.grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise (B, noise_dim) on the model's device."""
        z = torch.randn(batch_size, self.hparams.noise_dim, generator=generator)
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
        fake = self.generator_ema(self.noise(images.shape[0]), sentence_ema)
        text_embedding = self.discriminator.embed_text(sentence)
        real = self.discriminator.features(images)
        real_logits = self.discriminator.score(real, text_embedding)
        fake_logits = self.discriminator.score(self.discriminator.features(fake), text_embedding)
        mismatched_logits = self.discriminator.score(real, text_embedding.roll(1, 0))
        self.log_dict(
            {
                f"{split}/match_acc": (real_logits > mismatched_logits).float().mean(),
                f"{split}/real_vs_fake_acc": (real_logits > fake_logits).float().mean(),
            },
            batch_size=images.shape[0],
        )

    # ------------------------------------------------------------------ sampling

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], num_images: int = 1, seed: int = 0) -> torch.Tensor:
        """Draw images for text prompts with the EMA generator.

        Args:
            prompts: Captions to draw; none may be empty.
            num_images: Images per prompt.
            seed: Noise seed; the same seed gives the same images on the same device.

        Returns:
            uint8 tensor (len(prompts) * num_images, 3, H, W) on the CPU, the images of prompt ``i``
            at rows ``i * num_images … (i + 1) * num_images - 1``.
        """
        tokens = self.encode_prompts(prompts)
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        _, sentence = self.text_encoder_ema(tokens.to(self.device))
        sentence = sentence.repeat_interleave(num_images, dim=0)  # (N, S)
        z = self.noise(sentence.shape[0], torch.Generator().manual_seed(seed))
        images = self.generator_ema(z, sentence)  # (N, 3, H, W) in [-1, 1]
        return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Validate prompts and turn them into token ids (B, max_length); warn once about unknown words."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("no prompts given")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one word")
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer: load it from a checkpoint or call set_tokenizer()")
        unknown = sorted({w for p in prompts for w in self.tokenizer.unknown_words(p)})
        if unknown:
            warnings.warn(f"words not in the training vocabulary are ignored as [UNK]: {unknown}", stacklevel=3)
        return self.tokenizer.encode(prompts)
