"""The M2GAN LightningModule: orchestrates the networks, the objective, the optimisers and the EMA.

Three players: a generator (text -> image), a captioner (image -> text), and a multimodal
discriminator with its text encoder, which judges (image, text) pairs. One training batch makes one
discriminator step and, every ``n_critic`` batches, one step of generator and captioner together
followed by an EMA update. What each step minimises is :class:`~m2gan.objective.GANObjective`'s;
how the EMA networks sample is :class:`~m2gan.pipeline.SamplingPipeline`'s (``model.ema``).

Lightning's ``global_step`` counts *optimizer* steps, so with ``n_critic=1`` one batch advances it
by 2: ``--trainer.max_steps 2000`` means 1,000 batches. The default config therefore sets the run's
length in batches through the epoch length (``data.train_size / data.batch_size``) and leaves
``max_steps`` unset.
"""

from __future__ import annotations

import copy
import os
from typing import Literal

import pytorch_lightning as pl
import torch

from m2gan import losses, rng
from m2gan.batch import CaptionBatch, EvaluationBatch, PromptBatch
from m2gan.checkpoint_io import (
    EARLIER_DEFAULTS,
    RNG_KEY,
    TOKENIZER_KEY,
    WORD_PAIRS_KEY,
    CheckpointError,
    check_text_sources,
    check_weights,
    load_weights,
    model_settings,
    read_checkpoint,
    upgrade_state_dict,
    valid_settings,
)
from m2gan.ema import ema_beta, update_ema
from m2gan.negatives import WordPairs
from m2gan.networks import Discriminator
from m2gan.networks.blocks import check_resolution
from m2gan.networks.text_encoder import TextArchitecture
from m2gan.objective import GANObjective, GradientPenalty, ObjectiveConfig, TextBatch
from m2gan.pipeline import PipelineConfig, SamplingPipeline
from m2gan.tokenizer import PAD_ID, CaptionTokenizer


class CheckpointMismatch(ValueError):
    """A checkpoint that does not belong to this model or data configuration."""


class DivergenceError(RuntimeError):
    """Training produced non-finite losses or gradients for too many consecutive steps."""


class CollapseError(RuntimeError):
    """The generator collapsed (flat or identical images) and the run was asked to stop then."""


class M2GAN(pl.LightningModule):
    """Text-conditioned GAN with a multimodal (image-text) discriminator.

    Args:
        resolution: Image side, a power of two from 32 to 256 (linked from ``data.resolution``).
        vocab_size: Tokenizer vocabulary size (linked from the data module).
        max_length: Tokens per caption (linked from the data module).
        noise_dim: Width of the generator's noise vector.
        text_width: Width of the text encoder's word embeddings and word features.
        sentence_dim: Width of the sentence vector that conditions generator and discriminator.
        text_architecture: How the text encoder reads a caption: ``"gru"`` (bidirectional, in
            order) or ``"transformer"`` (the first setting). The discriminator learned which word
            goes with which object from the GRU's sentence vectors, not from the transformer's.
        text_encoder: Folder of a pretrained ``transformers`` text model (CLIP text, T5 encoder,
            BERT-style; ``save_pretrained`` or a hub snapshot, never downloaded) that encodes the
            captions instead of the built-in encoder; None = the built-in one (``text_architecture``).
            Its features are projected to ``text_width`` and ``sentence_dim``. Checkpoints name the
            folder and the SHA-256 of its files, and refuse to load with another.
        text_encoder_trainable: Fine-tune the pretrained model (by the discriminator's losses, at
            ``lr_text_encoder``; its weights are then saved in checkpoints) instead of keeping it frozen.
        lr_text_encoder: Learning rate of a fine-tuned pretrained text model.
        text_layers: GRU or transformer layers of the text encoder.
        text_position_std: Standard deviation of the transformer's initial position embeddings;
            its word embeddings start at 1. At 0.02 (the first setting) the sentence vector stayed
            blind to word order.
        g_channels: Generator channels at full resolution (doubling as the side halves).
        generator_output: The generator's last layer: ``"linear"`` (StyleGAN2; clamped only when
            converted to pixels) or ``"tanh"`` (DF-GAN). A saturated ``tanh`` passes no gradient, and
            on data with mostly black pixels the generator can end up drawing only black images.
        word_attention_sides: Generator stages (feature-map sides, e.g. ``[8, 16]``) whose features
            attend to the caption's word features through a gate that starts closed; empty = the
            sentence-only generator.
        d_channels: Discriminator channels at full resolution (doubling as the side halves).
        max_channels: Cap on channels of both networks at low resolution.
        embed_dim: Width of the discriminator's joint image-text embedding.
        adversarial_loss: ``"hinge"`` or ``"non_saturating"``.
        mismatch_weight: Weight of (real image, another sample's caption) among the
            discriminator's fakes (the matching-aware loss); 0 turns it off.
        swap_weight: Weight of (real image, its caption with one word swapped) among the
            discriminator's fakes; when positive, the swapped caption is also a hard negative of
            both contrastive losses. These negatives make every word matter (``m2gan.negatives``).
        binding_negative_share: Share of the swapped captions that instead exchange two words of the
            caption where the batch shows each can stand in the other's place ("a red circle left of
            a blue square" -> "a blue circle left of a red square"), so the discriminator must check
            which word goes with which object; needs ``swap_weight`` > 0; 0 = off.
        contrastive_weight_d: Weight of the image-text contrastive loss on real pairs, trained into
            the discriminator and text encoder; 0 turns it off.
        contrastive_weight_g: Weight of the contrastive loss on generated images, trained into the
            generator (its images must be recognisable as their caption among the batch's); 0 = off.
        contrastive_temperature: Temperature of both contrastive losses (and the word-region one).
        word_region_weight: Weight of the word-region matching loss (XMC-GAN, AttnGAN's DAMSM): each
            word of a caption attends over the discriminator's 4×4 regions of the image, and real
            pairs must match word by word better than the batch's other pairings; trained into the
            discriminator and text encoder on real images and into the generator on its own; 0 = off.
        text_order_weight: Weight of the text-only contrastive loss trained into the text encoder:
            each caption's sentence vector must lie nearest another caption of the same image (a
            paraphrase) and apart from its binding twins (the same words bound otherwise) and the
            batch's other captions. The critic alone has little use for word order on data whose
            captions are mostly single objects; this gives the conditioning a reason to carry it; 0 = off.
        twin_negative_weight: Weight of (real image, each binding twin of its caption) among the
            discriminator's fakes: every two-object caption's twins (``m2gan.negatives.binding_twins``,
            every kind), not a share of the one swap per caption; 0 = off.
        caption_twin_weight: Weight of the captioner's binding term on real pairs: its
            log-likelihood of a caption must beat that of each binding twin by ``twin_margin`` nats
            (a hinge: met pairs give no gradient, so captioning is not pushed around); 0 = off.
        caption_preference_weight: Weight of the same hinge trained into the generator on its own
            images (the captioner frozen there): a drawing must read as its caption rather than as
            its twins. A captioner reads binding where the critic may not; 0 = off.
        twin_margin: The margin, in nats of summed caption log-likelihood, of both hinges above.
        mode_seeking_weight: Weight of MSGAN's mode-seeking term in the generator's loss: half of
            each batch's captions are drawn a second time with other noise, and the generator pays
            the inverse of how far the two images lie apart per unit of noise distance, so that
            it uses its noise (one drawing per caption is a collapse no critic sees); 0 = off.
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
            oneDNN on CPUs (and tensor cores on GPUs) run faster (``benchmarks/efficiency.py``
            measures by how much). Numerics differ from the contiguous layout only by
            floating-point summation order.
    """

    def __init__(
        self,
        resolution: int = 32,
        vocab_size: int = 64,
        max_length: int = 24,
        noise_dim: int = 64,
        text_width: int = 64,
        sentence_dim: int = 64,
        text_architecture: TextArchitecture = "gru",
        text_encoder: str | None = None,
        text_encoder_trainable: bool = False,
        lr_text_encoder: float = 1e-5,
        text_layers: int = 1,
        text_position_std: float = 1.0,
        g_channels: int = 16,
        generator_output: Literal["linear", "tanh"] = "linear",
        word_attention_sides: tuple[int, ...] = (),
        d_channels: int = 16,
        max_channels: int = 64,
        embed_dim: int = 64,
        adversarial_loss: losses.AdversarialLoss = "hinge",
        mismatch_weight: float = 0.5,
        swap_weight: float = 0.5,
        binding_negative_share: float = 0.0,
        contrastive_weight_d: float = 1.0,
        contrastive_weight_g: float = 1.0,
        contrastive_temperature: float = 0.1,
        word_region_weight: float = 0.0,
        text_order_weight: float = 0.0,
        twin_negative_weight: float = 0.0,
        caption_twin_weight: float = 0.0,
        caption_preference_weight: float = 0.0,
        twin_margin: float = 1.0,
        mode_seeking_weight: float = 0.0,
        gradient_penalty: GradientPenalty = "r1",
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
            ("lr_text_encoder", lr_text_encoder),
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
        if not 0.0 <= binding_negative_share <= 1.0:
            raise ValueError(f"model.binding_negative_share must lie in [0, 1], got {binding_negative_share}")
        if binding_negative_share > 0 and swap_weight <= 0:
            raise ValueError(
                "model.binding_negative_share > 0 needs model.swap_weight > 0: binding swaps are swapped captions"
            )
        for name, value in (("cycle_weight", cycle_weight), ("caption_preference_weight", caption_preference_weight)):
            if value > 0 and caption_weight <= 0:
                raise ValueError(
                    f"model.{name} > 0 needs model.caption_weight > 0: an untrained captioner cannot judge"
                )
        for name, value in (("twin_margin", twin_margin), ("mode_seeking_weight", mode_seeking_weight),
                            ("twin_negative_weight", twin_negative_weight)):  # fmt: skip
            if value < 0:
                raise ValueError(f"model.{name} must not be negative, got {value}")
        if text_encoder_trainable and text_encoder is None:
            raise ValueError("model.text_encoder_trainable needs model.text_encoder: the folder of a pretrained model")
        if text_encoder is not None:
            if caption_adversarial_weight > 0:
                raise ValueError(
                    "model.caption_adversarial_weight > 0 needs the built-in text encoder: a pretrained one reads "
                    "word ids, not the captioner's relaxed tokens"
                )
            text_encoder = os.path.abspath(os.path.expanduser(text_encoder))  # checkpoints work from any folder
        self.save_hyperparameters()
        self.automatic_optimization = False
        self._rng_to_restore: dict | None = None
        self._train_logs: dict[str, torch.Tensor] = {}  # written by write_train_logs

        sizes = PipelineConfig.from_settings(self.hparams)
        self.text_encoder = sizes.make_text_encoder()
        self.generator = sizes.make_generator()
        word_dim = text_width if word_region_weight > 0 else None
        self.discriminator = Discriminator(resolution, sentence_dim, d_channels, max_channels, embed_dim, word_dim)
        if channels_last:
            self.discriminator.to(memory_format=torch.channels_last)
        self.captioner = sizes.make_captioner()
        # The sampling pipeline: EMA copies of text encoder, generator and captioner, never trained directly.
        self.ema = SamplingPipeline(
            *(copy.deepcopy(net).requires_grad_(False) for net in (self.text_encoder, self.generator, self.captioner)),
            config=sizes,
        )
        self.objective = GANObjective(
            self.text_encoder,
            self.generator,
            self.discriminator,
            self.captioner,
            ObjectiveConfig.from_settings(self.hparams),
        )
        # Counters live in buffers so they travel in checkpoints (lazy-penalty phase, EMA ramp-up).
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("g_steps", torch.zeros((), dtype=torch.long))
        # Divergence guard: all skipped steps, and the current run of consecutive ones per network.
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("bad_run", torch.zeros(2, dtype=torch.long))  # (discriminator, generator)

    # ------------------------------------------------------------------ setup and checkpoints

    @property
    def tokenizer(self) -> CaptionTokenizer | None:
        """The tokenizer of the captions (the sampling pipeline's); saved inside every checkpoint."""
        return self.ema.tokenizer

    def set_tokenizer(self, tokenizer: CaptionTokenizer) -> None:
        """Attach the tokenizer the token ids come from; it must fit ``vocab_size`` and ``max_length``."""
        self.ema.set_tokenizer(tokenizer)
        self.text_encoder.set_vocabulary(tokenizer.vocabulary())

    def setup(self, stage: str) -> None:
        # The data module owns the tokenizer it fitted on the training captions.
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)
        if self.objective.word_pairs is None:  # evidence already read from a checkpoint stays
            self.objective.word_pairs = getattr(self.trainer.datamodule, "word_pairs", None)
        for logger in self.loggers:  # one step axis for every record: batches trained
            if hasattr(logger, "step_source"):
                logger.step_source = lambda: self.batches_trained

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizer is not None:
            checkpoint[TOKENIZER_KEY] = self.tokenizer.to_json()
        if self.objective.word_pairs is not None:
            checkpoint[WORD_PAIRS_KEY] = self.objective.word_pairs.to_tensor()
        trainer = self._trainer
        if trainer is not None and trainer.training:  # between two training batches: the next one draws from here
            checkpoint[RNG_KEY] = rng.capture()

    def on_fit_start(self) -> None:
        if self.objective.word_pairs is not None:  # checked against every batch's token ids: keep them together
            self.objective.word_pairs = self.objective.word_pairs.to(self.device)

    def on_train_batch_start(self, batch: CaptionBatch, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            rng.restore(self._rng_to_restore)
            self._rng_to_restore = None

    def upgrade_state_dict(self, state_dict: dict) -> None:
        """Bring a state dict of an older M2GAN to today's names; counters it lacks start at zero."""
        upgrade_state_dict(state_dict)
        for name in ("skipped_steps", "bad_run"):  # the divergence guard's, newer than some checkpoints
            state_dict.setdefault(name, torch.zeros_like(getattr(self, name)))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.upgrade_state_dict(checkpoint.setdefault("state_dict", {}))
        # Restored right before the next training batch, not now: Lightning draws from the global
        # RNG while it rebuilds the data loaders, which the uninterrupted run did at epoch start.
        self._rng_to_restore = checkpoint.get(RNG_KEY)
        self.set_tokenizer(self._checkpoint_tokenizer(checkpoint, self.tokenizer))
        self._check_generator_output(checkpoint)
        if WORD_PAIRS_KEY in checkpoint:  # older checkpoints lack it: then the data module's
            self.objective.word_pairs = WordPairs.from_tensor(checkpoint[WORD_PAIRS_KEY])

    def _checkpoint_tokenizer(self, checkpoint: dict, expected: CaptionTokenizer | None) -> CaptionTokenizer:
        """The checkpoint's tokenizer, if it equals ``expected`` (when given) and fits this model."""
        if TOKENIZER_KEY not in checkpoint:
            raise CheckpointMismatch("checkpoint holds no tokenizer: it was not written by M2GAN")
        try:
            saved = CaptionTokenizer.from_json(checkpoint[TOKENIZER_KEY])
        except ValueError as error:
            raise CheckpointMismatch(f"the checkpoint's tokenizer is unreadable: {error}") from None
        if expected is not None and saved != expected:
            raise CheckpointMismatch(
                "the checkpoint's tokenizer differs from the data module's: it was trained on other data or "
                "another data config (max_length, vocabulary); resume it with the config it was trained with"
            )
        try:
            self.ema.check_tokenizer(saved)
        except ValueError as error:
            raise CheckpointMismatch(f"{error}: the checkpoint was trained with another config") from None
        return saved

    def _check_generator_output(self, checkpoint: dict) -> None:
        """The checkpoint's generator must end as this one does: the same weights draw other images otherwise."""
        if "hyper_parameters" not in checkpoint:  # not one of Lightning's: nothing to compare with
            return
        saved = checkpoint["hyper_parameters"].get("generator_output", EARLIER_DEFAULTS["generator_output"])
        if saved != self.hparams.generator_output:
            raise CheckpointMismatch(
                f"the checkpoint's generator ends in {saved}, this model's in {self.hparams.generator_output}: "
                f"load it with --model.generator_output {saved}"
            )

    def check_checkpoint(self, path: str | os.PathLike, tokenizer: CaptionTokenizer | None = None) -> None:
        """Check, without loading it, that the checkpoint at ``path`` can resume or evaluate this module.

        It must be readable, hold weights of this module's names and shapes, and a tokenizer equal
        to ``tokenizer`` (the data's, when given).

        Raises:
            FileNotFoundError: nothing at ``path``.
            CheckpointError: what does not fit, naming ``path`` and the weights.
        """
        checkpoint = read_checkpoint(path)
        try:  # the tokenizer first: when the data differs, that is the clearer reason
            self._checkpoint_tokenizer(checkpoint, tokenizer)
            self._check_generator_output(checkpoint)
        except CheckpointMismatch as error:
            raise CheckpointError(f"{path}: {error}") from None
        self.upgrade_state_dict(checkpoint["state_dict"])
        check_weights(path, self, checkpoint["state_dict"])
        check_text_sources(path, self, checkpoint["state_dict"])

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> M2GAN:
        """The whole training module of a checkpoint (all four networks, the counters), in eval mode.

        To sample, :func:`m2gan.load` is lighter: it reads only the sampling pipeline. Checkpoints
        are unpickled with ``weights_only=True`` only, and bad files raise one clear
        :class:`~m2gan.checkpoint_io.CheckpointError`.
        """
        checkpoint = read_checkpoint(path, map_location)
        settings = model_settings(path, checkpoint["hyper_parameters"], cls)
        model = valid_settings(path, lambda: cls(**settings))
        try:
            model.on_load_checkpoint(checkpoint)
        except CheckpointMismatch as error:
            raise CheckpointError(f"{path}: {error}") from None
        load_weights(path, model, checkpoint["state_dict"])  # renamed and completed by on_load_checkpoint
        return model.to(map_location).eval()

    def configure_optimizers(self):
        hp = self.hparams
        # Generator and captioner are the two generating players: they step together.
        opt_g = torch.optim.Adam(
            [
                {"params": self.generator.parameters()},
                {"params": self.captioner.parameters(), "lr": hp.lr_captioner, "betas": tuple(hp.captioner_betas)},
            ],
            lr=hp.lr_g,
            betas=tuple(hp.betas),
        )
        # The text encoder learns with the discriminator; a fine-tuned pretrained model at its own rate.
        pretrained = list(self.text_encoder.backbone.parameters()) if hp.text_encoder_trainable else []
        pretrained_ids = {id(p) for p in pretrained}
        text_params = [p for p in self.text_encoder.parameters() if id(p) not in pretrained_ids]
        d_groups = [{"params": [*self.discriminator.parameters(), *text_params]}]
        if pretrained:
            d_groups.append({"params": pretrained, "lr": hp.lr_text_encoder})
        opt_d = torch.optim.Adam(d_groups, lr=hp.lr_d, betas=tuple(hp.betas))
        return opt_g, opt_d

    # ------------------------------------------------------------------ training

    def training_step(self, batch: CaptionBatch, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        text = self.d_step(batch["image"], batch["tokens"], opt_d, batch.get("paraphrase"))
        if batch_idx % self.hparams.n_critic == 0:
            self.g_step(batch["image"], text, opt_g)
            # EMA half-lives count images of the whole step: every process's batch.
            self.update_ema(batch_size=batch["image"].shape[0] * self.trainer.world_size)
        step = int(self.d_steps)
        if step % self.trainer.log_every_n_steps == 0 or step == 1:
            self.show_losses()
        if step % self.trainer.log_every_n_steps == 0:
            self.write_train_logs()

    def d_step(
        self, images: torch.Tensor, tokens: torch.Tensor, opt_d, paraphrase: torch.Tensor | None = None
    ) -> TextBatch:
        """One discriminator (and text encoder) update; returns what the generator step needs."""
        with self.toggled_optimizer(opt_d):
            d_loss = self.objective.discriminator_loss(images, tokens, self.penalty_due(), paraphrase)
            self._optimizer_step(opt_d, d_loss.loss, "discriminator")
        self.d_steps += 1
        self._train_logs.update(d_loss.logs)
        return d_loss.text

    def g_step(self, images: torch.Tensor, text: TextBatch, opt_g) -> None:
        """One update of generator and captioner for a batch of real ``images`` and their ``text``."""
        with self.toggled_optimizer(opt_g):
            g_loss = self.objective.generator_loss(images, text)
            self._optimizer_step(opt_g, g_loss.loss, "generator")
        self.g_steps += 1
        self._train_logs.update(g_loss.logs)

    def penalty_due(self) -> bool:
        """Whether the next discriminator step applies the (lazy) gradient penalty."""
        config = self.objective.config
        return config.has_gradient_penalty and int(self.d_steps) % config.gp_interval == 0

    def update_ema(self, batch_size: int) -> None:
        """Move the EMA text encoder, generator and captioner towards the trained ones."""
        hp = self.hparams
        beta = ema_beta(batch_size, hp.ema_half_life_images, int(self.g_steps) * batch_size, hp.ema_rampup)
        update_ema(self.ema.generator, self.generator, beta)
        update_ema(self.ema.text_encoder, self.text_encoder, beta)
        update_ema(self.ema.captioner, self.captioner, beta)

    def _optimizer_step(self, optimizer, loss: torch.Tensor, player: str) -> None:
        """Backward, clip and step — unless the loss or a gradient is not finite (then skip and count)."""
        optimizer.zero_grad(set_to_none=True)
        # Backward runs even for a non-finite loss: under DDP every rank must join the gradient
        # all-reduce, and the reduced gradients then carry the NaN to every rank alike, so all
        # ranks take the same decision below.
        self.manual_backward(loss)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # One fused foreach norm instead of an isfinite kernel per tensor. The norm is NaN/inf when
        # an entry is (or, harmlessly, when a gradient is so large, ~1e19, that its square
        # overflows: such a step is skipped too).
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

    # ------------------------------------------------------------------ logging

    @property
    def batches_trained(self) -> int:
        """Training batches done (one discriminator step each): the step of everything a run logs."""
        return int(self.d_steps)

    def show_losses(self) -> None:
        """Put the latest ``d_loss`` and ``g_loss`` on the progress bar.

        Called after the first batch, then every ``trainer.log_every_n_steps`` batches as the loggers
        get their metrics; not every batch, because a ``self.log`` call costs about a millisecond of
        Lightning bookkeeping on a CPU, a measurable share of a small training batch.
        """
        for name in ("d_loss", "g_loss"):
            if f"train/{name}" in self._train_logs:
                self.log(name, self._train_logs[f"train/{name}"], prog_bar=True, logger=False)

    def write_train_logs(self) -> None:
        """Send the latest training metrics (``train/*``) to every logger, at step = batches trained.

        Training metrics bypass ``self.log``: its bookkeeping costs about a millisecond per key on
        a CPU, too much for 14 keys a batch. They are written every ``trainer.log_every_n_steps``
        batches and at the end of training, as ``self.log`` would; the values are the latest
        batch's. So they are not in ``trainer.callback_metrics``: monitor ``val/*`` metrics in callbacks.
        """
        if self._train_logs:
            metrics = {name: float(value) for name, value in self._train_logs.items()}
            for logger in self.loggers:  # Lightning's loggers write on rank zero only
                logger.log_metrics(metrics, step=self.batches_trained)
            self._train_logs.clear()

    def on_train_end(self) -> None:
        self.write_train_logs()

    # ------------------------------------------------------------------ validation and prediction

    def validation_step(self, batch: EvaluationBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: EvaluationBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: EvaluationBatch, split: str) -> None:
        images, tokens = batch["image"], batch["tokens"]
        # Noise seeded by the batch's first sample: validation never draws from the training RNG
        # (exact resume) and gives the same numbers in every run and under any number of processes.
        seed = int(batch["index"][0]) if "index" in batch else 0
        words, sentence = self.ema.text_encoder(tokens)
        z = self.ema.noise(images.shape[0], torch.Generator().manual_seed(seed))
        fake = self.ema.generator(z, sentence, words, tokens == PAD_ID)
        metrics = self.objective.validation_metrics(images, tokens, fake, self.ema.captioner(images, tokens))
        self.log_dict({f"{split}/{name}": value for name, value in metrics.items()}, batch_size=images.shape[0])
        for name, (value, count) in self.objective.binding_metrics(images, tokens, self.ema.captioner, fake).items():
            self.log(f"{split}/{name}", value, batch_size=count)

    @torch.inference_mode()
    def predict_step(self, batch: PromptBatch, batch_idx: int) -> dict:
        """Draw one image per row of a prediction batch (``prompt``, and ``seed`` of the row's noise).

        Used by ``python train.py predict``: each row's noise comes from its own seed, so an image
        does not depend on the batch it was drawn in. Returns the batch with ``images`` (uint8) added.
        """
        return {**batch, "images": self.ema.generate_rows(batch["prompt"], batch["seed"])}
