"""The M2GAN LightningModule: orchestrates the networks, the objective, the optimisers and the EMA.

Three players: a generator (text -> image), a captioner (image -> text), and a multimodal
discriminator with its text encoder, which judges (image, text) pairs. One training batch makes one
discriminator step and, every ``n_critic`` batches, one step of generator and captioner together
followed by an EMA update. What each step minimises is :class:`~m2gan.objective.GANObjective`'s;
how the EMA networks sample is :class:`~m2gan.pipeline.SamplingPipeline`'s (``model.ema``).
Lightning's ``global_step`` counts *optimizer* steps: with ``n_critic=1`` one batch advances it by 2.
"""

from __future__ import annotations

import copy
import os

import pytorch_lightning as pl
import torch

from m2gan import checkpoint_io, rng
from m2gan.batch import CaptionBatch, EvaluationBatch, PromptBatch
from m2gan.checkpoint_io import RNG_KEY, TOKENIZER_KEY, WORD_PAIRS_KEY
from m2gan.ema import ema_beta, update_ema
from m2gan.negatives import WordPairs
from m2gan.networks import Discriminator
from m2gan.objective import GANObjective, TextBatch
from m2gan.pipeline import PipelineConfig, SamplingPipeline
from m2gan.settings import (
    CaptionerSettings,
    DiscriminatorSettings,
    GeneratorSettings,
    ModelSettings,
    ObjectiveSettings,
    TextSettings,
    TrainingSettings,
)
from m2gan.tokenizer import PAD_ID, CaptionTokenizer


class DivergenceError(RuntimeError):
    """Training produced non-finite losses or gradients for too many consecutive steps."""


class CollapseError(RuntimeError):
    """The generator collapsed (flat or identical images) and the run was asked to stop then."""


TEACHER_RAMPUP = 0.5
"""The region teacher's half-life is at most this share of the images seen: it averages the later
part of the run so far and never stays near the random initialisation (the sampling EMA's small
ramp-up would make it follow the critic within a few dozen batches)."""


class M2GAN(pl.LightningModule):
    """Text-conditioned GAN with a multimodal (image-text) discriminator.

    Each argument is documented once, on :class:`~m2gan.settings.ModelSettings` (the shared ones)
    and on its group's class; on the command line a group's fields are nested keys
    (``--model.objective.swap_weight 0.5``).

    Args:
        resolution: Image side (linked from ``data.resolution``).
        vocab_size: Tokenizer vocabulary size (linked from the data module).
        max_length: Tokens per caption (linked from the data module).
        max_channels: Cap on channels of the networks at low resolution.
        channels_last: Keep convolution weights in channels-last memory layout.
        text: The text encoder (:class:`~m2gan.settings.TextSettings`).
        generator: The generator and its EMA (:class:`~m2gan.settings.GeneratorSettings`).
        discriminator: The discriminator (:class:`~m2gan.settings.DiscriminatorSettings`).
        captioner: The captioner (:class:`~m2gan.settings.CaptionerSettings`).
        objective: The losses of a batch (:class:`~m2gan.settings.ObjectiveSettings`).
        training: How the players step (:class:`~m2gan.settings.TrainingSettings`).
    """

    def __init__(
        self,
        resolution: int = 32,
        vocab_size: int = 64,
        max_length: int = 24,
        max_channels: int = 64,
        channels_last: bool = True,
        text: TextSettings = TextSettings(),
        generator: GeneratorSettings = GeneratorSettings(),
        discriminator: DiscriminatorSettings = DiscriminatorSettings(),
        captioner: CaptionerSettings = CaptionerSettings(),
        objective: ObjectiveSettings = ObjectiveSettings(),
        training: TrainingSettings = TrainingSettings(),
    ) -> None:
        super().__init__()
        settings = ModelSettings(resolution, vocab_size, max_length, max_channels, channels_last,
                                 text, generator, discriminator, captioner, objective, training)  # fmt: skip
        if settings.text.text_encoder is not None:  # checkpoints work from any folder
            folder = os.path.abspath(os.path.expanduser(settings.text.text_encoder))
            settings = settings.replace(text={"text_encoder": folder})
        self.settings = settings
        self.save_hyperparameters(settings.to_dict())  # plain tables: checkpoints load with weights_only
        self.automatic_optimization = False
        self._rng_to_restore: dict | None = None
        self._train_logs: dict[str, torch.Tensor] = {}  # written by write_train_logs

        sizes = PipelineConfig.of(settings)
        self.text_encoder = sizes.make_text_encoder()
        self.generator = sizes.make_generator()
        word_dim = settings.text.text_width if settings.objective.word_region_weight > 0 else None
        d = settings.discriminator
        self.discriminator = Discriminator(resolution, settings.text.sentence_dim, d.d_channels, max_channels,
                                           d.embed_dim, word_dim)  # fmt: skip
        if channels_last:
            self.discriminator.to(memory_format=torch.channels_last)
        self.captioner = sizes.make_captioner()
        # The sampling pipeline: EMA copies of text encoder, generator and captioner, never trained directly.
        self.ema = SamplingPipeline(
            *(copy.deepcopy(net).requires_grad_(False) for net in (self.text_encoder, self.generator, self.captioner)),
            config=sizes,
        )
        # The generator's word-region teacher, if asked for: a slow copy of the critic, never trained directly.
        o = settings.objective
        teacher = o.word_region_teacher_half_life > 0 and o.generator_word_region_weight > 0
        self.region_teacher = copy.deepcopy(self.discriminator).requires_grad_(False) if teacher else None
        self.objective = GANObjective(
            self.text_encoder, self.generator, self.discriminator, self.captioner, o, self.region_teacher
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
        checkpoint_io.upgrade_state_dict(state_dict)
        for name in ("skipped_steps", "bad_run"):  # the divergence guard's, newer than some checkpoints
            state_dict.setdefault(name, torch.zeros_like(getattr(self, name)))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.upgrade_state_dict(checkpoint.setdefault("state_dict", {}))
        # Restored right before the next training batch, not now: Lightning draws from the global
        # RNG while it rebuilds the data loaders, which the uninterrupted run did at epoch start.
        self._rng_to_restore = checkpoint.get(RNG_KEY)
        self.set_tokenizer(checkpoint_io.checkpoint_tokenizer(checkpoint, self.ema, self.tokenizer))
        checkpoint_io.check_generator_output(checkpoint, self.settings)
        if WORD_PAIRS_KEY in checkpoint:  # older checkpoints lack it: then the data module's
            self.objective.word_pairs = WordPairs.from_tensor(checkpoint[WORD_PAIRS_KEY])

    def check_checkpoint(self, path: str | os.PathLike, tokenizer: CaptionTokenizer | None = None) -> None:
        """Check, without loading it, that the checkpoint at ``path`` can resume or evaluate this module
        (:func:`~m2gan.checkpoint_io.check_resumable`)."""
        checkpoint_io.check_resumable(path, self, tokenizer)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> M2GAN:
        """The whole training module of a checkpoint (all four networks, the counters), in eval mode
        (:func:`~m2gan.checkpoint_io.load_module`; to sample, :func:`m2gan.load` reads only the pipeline)."""
        return checkpoint_io.load_module(cls, path, map_location)

    def configure_optimizers(self):
        s = self.settings
        betas = s.training.betas
        # Generator and captioner are the two generating players: they step together.
        captioner = {"params": self.captioner.parameters(), "lr": s.captioner.lr_captioner,
                     "betas": s.captioner.captioner_betas}  # fmt: skip
        opt_g = torch.optim.Adam([{"params": self.generator.parameters()}, captioner], lr=s.generator.lr_g, betas=betas)
        # The text encoder learns with the discriminator; a fine-tuned pretrained model at its own rate.
        pretrained = list(self.text_encoder.backbone.parameters()) if s.text.text_encoder_trainable else []
        pretrained_ids = {id(p) for p in pretrained}
        text_params = [p for p in self.text_encoder.parameters() if id(p) not in pretrained_ids]
        d_groups = [{"params": [*self.discriminator.parameters(), *text_params]}]
        if pretrained:
            d_groups.append({"params": pretrained, "lr": s.text.lr_text_encoder})
        opt_d = torch.optim.Adam(d_groups, lr=s.discriminator.lr_d, betas=betas)
        return opt_g, opt_d

    # ------------------------------------------------------------------ training

    def training_step(self, batch: CaptionBatch, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        text = self.d_step(batch["image"], batch["tokens"], opt_d, batch.get("paraphrase"))
        if batch_idx % self.settings.training.n_critic == 0:
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
        """Move the EMA text encoder, generator and captioner (and the region teacher) towards the trained ones."""
        g = self.settings.generator
        beta = ema_beta(batch_size, g.ema_half_life_images, int(self.g_steps) * batch_size, g.ema_rampup)
        update_ema(self.ema.generator, self.generator, beta)
        update_ema(self.ema.text_encoder, self.text_encoder, beta)
        update_ema(self.ema.captioner, self.captioner, beta)
        if self.region_teacher is not None:
            half_life = self.settings.objective.word_region_teacher_half_life
            beta = ema_beta(batch_size, half_life, int(self.g_steps) * batch_size, TEACHER_RAMPUP)
            update_ema(self.region_teacher, self.discriminator, beta)

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
            if int(self.bad_run[which]) >= self.settings.training.max_bad_steps:
                raise DivergenceError(
                    f"training diverged: {int(self.bad_run[which])} consecutive {player} steps with a non-finite "
                    f"loss or gradient, the last at batch {int(self.d_steps)} (loss {loss.item()}); "
                    "the last checkpoint holds the weights from before it"
                )
            return
        self.bad_run[which] = 0
        if self.settings.training.grad_clip is not None:
            clip = self.settings.training.grad_clip
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
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
