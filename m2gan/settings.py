"""Every setting of an M2GAN model, declared once: typed, frozen dataclasses, one per part.

``M2GAN`` takes one group per part (``--model.objective.swap_weight``); the objective, the sampling
pipeline and the networks' builders read the groups as they are. Checkpoints save the groups as
plain nested tables (:meth:`ModelSettings.to_dict`) and :meth:`ModelSettings.from_saved` reads them
back, as well as the flat tables of earlier versions (:data:`EARLIER_DEFAULTS` fills what those
did not save). :meth:`ModelSettings.ignored` names the settings that have no effect under the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from m2gan.losses import AdversarialLoss
from m2gan.networks.blocks import check_resolution
from m2gan.networks.text_encoder import TextArchitecture

GradientPenalty = Literal["r1", "ma_gp", "none"]


def _positive(group: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"model.{group}.{name} must be positive, got {value}")


def _not_negative(group: str, **values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"model.{group}.{name} must not be negative, got {value}")


@dataclass(frozen=True)
class TextSettings:
    """The text encoder, which the discriminator's losses train and whose vectors condition the generator.

    Args:
        text_width: Width of the text encoder's word embeddings and word features.
        sentence_dim: Width of the sentence vector that conditions generator and discriminator.
        text_architecture: How the built-in encoder reads a caption: ``"gru"`` (bidirectional, in
            order) or ``"transformer"`` (the first setting). The discriminator learned which word
            goes with which object from the GRU's sentence vectors, not from the transformer's.
        text_encoder: Folder of a pretrained ``transformers`` text model (CLIP text, T5 encoder,
            BERT-style; ``save_pretrained`` or a hub snapshot, never downloaded) that encodes the
            captions instead of the built-in encoder; None = the built-in one. Its features are
            projected to ``text_width`` and ``sentence_dim``. Checkpoints name the folder and the
            SHA-256 of its files, and refuse to load with another.
        text_encoder_trainable: Fine-tune the pretrained model (by the discriminator's losses, at
            ``lr_text_encoder``; its weights are then saved in checkpoints) instead of keeping it frozen.
        lr_text_encoder: Learning rate of a fine-tuned pretrained text model.
        text_layers: GRU or transformer layers of the built-in encoder.
        text_position_std: Standard deviation of the transformer's initial position embeddings;
            its word embeddings start at 1. At 0.02 (the first setting) the sentence vector stayed
            blind to word order.
    """

    text_width: int = 64
    sentence_dim: int = 64
    text_architecture: TextArchitecture = "gru"
    text_encoder: str | None = None
    text_encoder_trainable: bool = False
    lr_text_encoder: float = 1e-5
    text_layers: int = 1
    text_position_std: float = 1.0

    def __post_init__(self) -> None:
        _positive("text", lr_text_encoder=self.lr_text_encoder, text_layers=self.text_layers)
        if self.text_encoder_trainable and self.text_encoder is None:
            raise ValueError(
                "model.text.text_encoder_trainable needs model.text.text_encoder: the folder of a pretrained model"
            )


@dataclass(frozen=True)
class GeneratorSettings:
    """The generator (text -> image) and its EMA copy, which samples.

    Args:
        noise_dim: Width of the generator's noise vector.
        g_channels: Generator channels at full resolution (doubling as the side halves).
        generator_output: The generator's last layer: ``"linear"`` (StyleGAN2; clamped only when
            converted to pixels) or ``"tanh"`` (DF-GAN). A saturated ``tanh`` passes no gradient, and
            on data with mostly black pixels the generator can end up drawing only black images.
        word_attention_sides: Generator stages (feature-map sides, e.g. ``[8, 16]``) whose features
            attend to the caption's word features through a gate that starts closed; empty = the
            sentence-only generator.
        noise_injection: Every stage's output gets a noise map added at a learned per-channel
            strength that starts at 0 (StyleGAN's per-layer noise), so the noise reaches the image
            past the blocks that wash out what enters at the start. The maps are fixed random
            projections of ``z``: a seed still gives the same image.
        lr_g: Generator learning rate.
        ema_half_life_images: Half-life of the EMA generator's (and captioner's) weights, in training images.
        ema_rampup: Cap the EMA half-life at this fraction of the images seen so far; None = off.
    """

    noise_dim: int = 64
    g_channels: int = 16
    generator_output: Literal["linear", "tanh"] = "linear"
    word_attention_sides: tuple[int, ...] = ()
    noise_injection: bool = False
    lr_g: float = 1e-3
    ema_half_life_images: float = 10_000.0
    ema_rampup: float | None = 0.05

    def __post_init__(self) -> None:  # a list from YAML or JSON, a tuple here: settings compare equal
        object.__setattr__(self, "word_attention_sides", tuple(self.word_attention_sides))
        _positive("generator", lr_g=self.lr_g, noise_dim=self.noise_dim, g_channels=self.g_channels)


@dataclass(frozen=True)
class DiscriminatorSettings:
    """The multimodal discriminator, which judges (image, text) pairs.

    Args:
        d_channels: Discriminator channels at full resolution (doubling as the side halves).
        embed_dim: Width of the discriminator's joint image-text embedding.
        lr_d: Discriminator (and text encoder) learning rate.
    """

    d_channels: int = 16
    embed_dim: int = 64
    lr_d: float = 1e-3

    def __post_init__(self) -> None:
        _positive("discriminator", lr_d=self.lr_d, d_channels=self.d_channels, embed_dim=self.embed_dim)


@dataclass(frozen=True)
class CaptionerSettings:
    """The captioner (image -> text): a convolutional image encoder and a transformer decoder.

    Args:
        captioner_width: Width of the captioner's image tokens, word embeddings and decoder.
        captioner_layers: Transformer decoder layers of the captioner.
        captioner_channels: Channels of the captioner's image encoder at full resolution.
        lr_captioner: Captioner learning rate.
        captioner_betas: Adam betas of the captioner (a language model wants momentum, unlike GANs).
    """

    captioner_width: int = 64
    captioner_layers: int = 2
    captioner_channels: int = 16
    lr_captioner: float = 3e-3
    captioner_betas: tuple[float, float] = (0.9, 0.99)

    def __post_init__(self) -> None:
        object.__setattr__(self, "captioner_betas", tuple(self.captioner_betas))
        _positive("captioner", lr_captioner=self.lr_captioner)


@dataclass(frozen=True)
class ObjectiveSettings:
    """What one batch's losses are made of (:class:`~m2gan.objective.GANObjective`).

    Args:
        adversarial_loss: ``"hinge"`` or ``"non_saturating"``.
        mismatch_weight: Weight of (real image, another sample's caption) among the
            discriminator's fakes (the matching-aware loss); 0 turns it off.
        swap_weight: Weight of (real image, its caption with one word swapped) among the
            discriminator's fakes; when positive, the swapped caption is also a hard negative of
            both contrastive losses. These negatives make every word matter (``m2gan.negatives``).
        swap_from_corpus: The swapped caption's new word comes from the whole corpus (any word
            seen between the same two neighbours: "a red *circle* on the left" -> "a red *square*
            on the left"), not from the batch's most similar caption, which rarely differs in just
            the word that matters; captions without such a word keep the batch swap.
        swap_candidates: Each caption's swapped caption is the hardest of this many drawn swaps:
            the one the critic scores highest with the real image (hard-negative mining, VSE++).
            A random swap rarely exchanges the one word the critic still confuses ("circle" for
            "square"), so without mining such a pair is seldom asked about; 1 = one random swap.
        swap_captioner_margin: With ``swap_candidates`` > 1, a drawn swap is a candidate only if the
            captioner finds it at least this many nats less likely than the caption for the image
            (summed over the caption's tokens): mining otherwise prefers synonyms ("big" for "large"),
            the swaps the critic rightly cannot reject; 0 = every changed draw is a candidate.
        binding_negative_share: Share of the swapped captions that instead exchange two words of the
            caption where the batch shows each can stand in the other's place ("a red circle left of
            a blue square" -> "a blue circle left of a red square"), so the discriminator must check
            which word goes with which object; needs ``swap_weight`` > 0; 0 = off.
        twin_negative_weight: Weight of (real image, each binding twin of its caption) among the
            discriminator's fakes: every two-object caption's twins (``m2gan.negatives.binding_twins``,
            every kind), not a share of the one swap per caption; 0 = off.
        contrastive_weight_d: Weight of the image-text contrastive loss on real pairs, trained into
            the discriminator and text encoder; 0 turns it off.
        contrastive_weight_g: Weight of the contrastive loss on generated images, trained into the
            generator (its images must be recognisable as their caption among the batch's); 0 = off.
        contrastive_temperature: Temperature of the contrastive losses (sentence, word-region, text order).
        word_region_weight: Weight of the word-region matching loss (XMC-GAN, AttnGAN's DAMSM): each
            word of a caption attends over the discriminator's 4×4 regions of the image, and real
            pairs must match word by word better than the batch's other pairings; trained into the
            discriminator and text encoder on real images and into the generator on its own; 0 = off.
        word_region_weight_g: The generator's weight of the word-region loss on its own images, when it
            should differ from the critic's (``word_region_weight``, which also builds the head);
            None = the same.
        word_region_teacher_half_life: The generator's word-region term reads a slow copy of the
            critic (its weights averaged with this half-life in images, at most half the images
            seen so far) instead of the live one, which moves every step; 0 = the live critic.
        word_region_twins: Each image's binding twins are also candidates of the word-region loss
            (for the critic on real images, for the generator on its own), ranked below the caption:
            a head whose words attend to regions can see which word is drawn where.
        text_order_weight: Weight of the text-only contrastive loss trained into the text encoder:
            each caption's sentence vector must lie nearest another caption of the same image (a
            paraphrase) and apart from its binding twins (the same words bound otherwise) and the
            batch's other captions. The critic alone has little use for word order on data whose
            captions are mostly single objects; this gives the conditioning a reason to carry it; 0 = off.
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
        augment_translation: DiffAugment's translation: real and generated images are shifted by a
            random whole number of pixels, up to this fraction of the side, before the critic sees
            them, in both players' losses (``m2gan.augment``); 0 = off (DiffAugment uses 0.125).
        gradient_penalty: ``"r1"`` (on real images), ``"ma_gp"`` (DF-GAN's matching-aware penalty on
            real images and sentences) or ``"none"``.
        gp_weight: R1's gamma, or MA-GP's coefficient.
        gp_interval: Lazy regularisation: apply the penalty every this many discriminator steps,
            scaled by the interval (StyleGAN2), which makes it affordable on a CPU.
        caption_weight: Weight of the captioner's teacher-forced cross-entropy on real pairs;
            0 leaves the captioner untrained (and then the cycle loss must be off too).
        caption_label_smoothing: Label smoothing of that cross-entropy.
        cycle_weight: Weight of the cycle (redescription) loss trained into the generator: the
            frozen captioner's cross-entropy of the prompt given the generated image; 0 = off.
        caption_adversarial_weight: Weight of the adversarial caption loss: the discriminator also
            counts (real image, sampled caption) as fake, and the captioner learns to fool it
            through straight-through one-hot tokens; 0 = off.
        caption_temperature: Softmax temperature of the straight-through relaxation.
    """

    adversarial_loss: AdversarialLoss = "hinge"
    mismatch_weight: float = 0.5
    swap_weight: float = 0.5
    swap_from_corpus: bool = False
    swap_candidates: int = 1
    swap_captioner_margin: float = 0.0
    binding_negative_share: float = 0.0
    twin_negative_weight: float = 0.0
    contrastive_weight_d: float = 1.0
    contrastive_weight_g: float = 1.0
    contrastive_temperature: float = 0.1
    word_region_weight: float = 0.0
    word_region_weight_g: float | None = None
    word_region_teacher_half_life: float = 0.0
    word_region_twins: bool = False
    text_order_weight: float = 0.0
    caption_twin_weight: float = 0.0
    caption_preference_weight: float = 0.0
    twin_margin: float = 1.0
    mode_seeking_weight: float = 0.0
    augment_translation: float = 0.0
    gradient_penalty: GradientPenalty = "r1"
    gp_weight: float = 0.1
    gp_interval: int = 4
    caption_weight: float = 1.0
    caption_label_smoothing: float = 0.0
    cycle_weight: float = 1.0
    caption_adversarial_weight: float = 0.0
    caption_temperature: float = 1.0

    def __post_init__(self) -> None:
        _positive("objective", contrastive_temperature=self.contrastive_temperature, swap_candidates=self.swap_candidates,
                  caption_temperature=self.caption_temperature, gp_interval=self.gp_interval)  # fmt: skip
        _not_negative("objective", twin_margin=self.twin_margin, mode_seeking_weight=self.mode_seeking_weight,
                      twin_negative_weight=self.twin_negative_weight, swap_captioner_margin=self.swap_captioner_margin,
                      augment_translation=self.augment_translation,
                      word_region_teacher_half_life=self.word_region_teacher_half_life,
                      word_region_weight_g=self.word_region_weight_g or 0.0)  # fmt: skip
        if not 0.0 <= self.binding_negative_share <= 1.0:
            raise ValueError(
                f"model.objective.binding_negative_share must lie in [0, 1], got {self.binding_negative_share}"
            )
        if self.binding_negative_share > 0 and self.swap_weight <= 0:
            raise ValueError(
                "model.objective.binding_negative_share > 0 needs model.objective.swap_weight > 0: "
                "binding swaps are swapped captions"
            )
        for name in ("cycle_weight", "caption_preference_weight"):
            if getattr(self, name) > 0 and self.caption_weight <= 0:
                raise ValueError(
                    f"model.objective.{name} > 0 needs model.objective.caption_weight > 0: "
                    "an untrained captioner cannot judge"
                )

    @property
    def generator_word_region_weight(self) -> float:
        """The generator's weight of the word-region loss (0 without the critic's head)."""
        if self.word_region_weight <= 0 or self.word_region_weight_g is None:
            return self.word_region_weight
        return self.word_region_weight_g

    @property
    def uses_twins(self) -> bool:
        """Whether a loss of the batch reads its captions' binding twins."""
        weights = (self.text_order_weight, self.twin_negative_weight, self.caption_twin_weight,
                   self.caption_preference_weight)  # fmt: skip
        return any(weight > 0 for weight in weights) or (self.word_region_twins and self.word_region_weight > 0)

    @property
    def has_gradient_penalty(self) -> bool:
        """Whether a gradient penalty is applied at all (on every ``gp_interval``-th D step)."""
        return self.gradient_penalty != "none" and self.gp_weight > 0


@dataclass(frozen=True)
class TrainingSettings:
    """How the players step.

    Args:
        n_critic: Discriminator steps per generator step.
        betas: Adam betas of generator and discriminator.
        grad_clip: Clip each network's gradient norm to this value before its step; None = off.
            (Under ``16-mixed`` precision the clipped gradients are still loss-scaled; prefer
            ``bf16-mixed``, which has no scaler.)
        max_bad_steps: Divergence guard: a step whose loss or gradients are not finite is skipped
            (nothing reaches the weights or the optimizer state) and counted
            (``train/skipped_steps``); after this many consecutive skipped steps of one network,
            training stops with :class:`~m2gan.model.DivergenceError` naming the step and the loss.
    """

    n_critic: int = 1
    betas: tuple[float, float] = (0.0, 0.99)
    grad_clip: float | None = None
    max_bad_steps: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        for name in ("n_critic", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.training.{name} must be at least 1, got {getattr(self, name)}")


GROUPS: dict[str, type] = {
    "text": TextSettings,
    "generator": GeneratorSettings,
    "discriminator": DiscriminatorSettings,
    "captioner": CaptionerSettings,
    "objective": ObjectiveSettings,
    "training": TrainingSettings,
}
"""The model's setting groups, by the key they have under ``model``."""
TOP_LEVEL = ("resolution", "vocab_size", "max_length", "max_channels", "channels_last")
"""Settings every part shares, directly under ``model``."""
GROUP_OF = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}
"""Each group field's group: where a flat setting of an earlier version lives now."""
EARLIER_DEFAULTS = {"generator_output": "tanh", "text_position_std": 0.02, "text_architecture": "transformer"}
"""Settings whose default changed, with the value that checkpoints and exports which do not save
them were trained with."""


class SettingsError(ValueError):
    """Saved or given settings this version cannot read (the message names the key)."""


def nest(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings given by their own names (``{"swap_weight": 0.5}``, as earlier versions saved them) and
    group tables (``{"objective": {...}}``), in any mix, as nested tables; later entries win."""
    nested: dict[str, Any] = {}
    for name, value in settings.items():
        if name in GROUP_OF:
            nested.setdefault(GROUP_OF[name], {})[name] = value
        elif name in GROUPS:
            if not isinstance(value, Mapping):
                raise SettingsError(f"model.{name} is not a table of settings")
            nested[name] = {**nested.get(name, {}), **value}
        elif name in TOP_LEVEL:
            nested[name] = value
        else:
            raise SettingsError(f"unknown model setting {name!r}")
    return nested


def overridden(nested: Mapping[str, Any], **flat: Any) -> dict[str, Any]:
    """Nested settings tables (a config's ``model:``) with some settings changed, given by their own
    names: ``overridden(config["model"], swap_weight=0, vocab_size=40)``."""
    return nest({**nested, **flat})


def new_key(name: str) -> str | None:
    """Where an earlier version's flat ``model.<name>`` lives now (``model.objective.swap_weight``), if it moved."""
    return f"model.{GROUP_OF[name]}.{name}" if name in GROUP_OF else None


@dataclass(frozen=True)
class ModelSettings:
    """All of a model's settings: the shared ones and a group per part (each documented on its class).

    Args:
        resolution: Image side, a power of two from 32 to 256 (linked from ``data.resolution``).
        vocab_size: Tokenizer vocabulary size (linked from the data module).
        max_length: Tokens per caption (linked from the data module).
        max_channels: Cap on channels of generator, discriminator and captioner at low resolution.
        channels_last: Keep convolution weights in channels-last (NHWC) memory layout, which
            oneDNN on CPUs (and tensor cores on GPUs) run faster (``benchmarks/efficiency.py``
            measures by how much). Numerics differ from the contiguous layout only by
            floating-point summation order.
    """

    resolution: int = 32
    vocab_size: int = 64
    max_length: int = 24
    max_channels: int = 64
    channels_last: bool = True
    text: TextSettings = field(default_factory=TextSettings)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    discriminator: DiscriminatorSettings = field(default_factory=DiscriminatorSettings)
    captioner: CaptionerSettings = field(default_factory=CaptionerSettings)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def __post_init__(self) -> None:
        for group, cls in GROUPS.items():  # tables (from a checkpoint or Python) become their group
            value = getattr(self, group)
            if isinstance(value, Mapping):
                unknown = sorted(set(value) - {f.name for f in fields(cls)})
                if unknown:
                    raise SettingsError(f"unknown setting model.{group}.{unknown[0]}")
                object.__setattr__(self, group, cls(**value))
        check_resolution(self.resolution)
        if self.vocab_size < 1:
            raise ValueError(f"model.vocab_size must be at least 1, got {self.vocab_size}")
        if self.text.text_encoder is not None and self.objective.caption_adversarial_weight > 0:
            raise ValueError(
                "model.objective.caption_adversarial_weight > 0 needs the built-in text encoder: a pretrained one "
                "reads word ids, not the captioner's relaxed tokens"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested tables (what checkpoints and exports save)."""
        return asdict(self)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> ModelSettings:
        """Settings saved by any version: nested tables, or an earlier version's flat ones; what a
        saved table lacks takes its earlier default (:data:`EARLIER_DEFAULTS`) or today's.

        Raises:
            SettingsError: a key no version had (a newer or a different M2GAN wrote it).
        """
        nested = nest({k: v for k, v in saved.items() if not k.startswith("_")})
        for name, value in EARLIER_DEFAULTS.items():
            nested.setdefault(GROUP_OF[name], {}).setdefault(name, value)
        return cls(**nested)

    def ignored(self) -> list[str]:
        """One line per setting given a value other than its default that has no effect under the others."""
        text, objective = self.text, self.objective
        pretrained = text.text_encoder is not None
        rules = [
            ("text_position_std", pretrained or text.text_architecture != "transformer",
             "it initialises only the built-in transformer's position embeddings"),
            ("text_layers", pretrained, "a pretrained text encoder (model.text.text_encoder) has its own layers"),
            ("text_architecture", pretrained, "model.text.text_encoder replaces the built-in encoder"),
            ("lr_text_encoder", not text.text_encoder_trainable,
             "the pretrained text encoder is frozen (model.text.text_encoder_trainable is false)"),
            ("caption_temperature", objective.caption_adversarial_weight <= 0,
             "it relaxes sampled captions for the adversarial caption loss, which is off"),
            ("caption_label_smoothing", objective.caption_weight <= 0,
             "the captioner's cross-entropy is off (model.objective.caption_weight 0)"),
            ("gp_weight", objective.gradient_penalty == "none", "model.objective.gradient_penalty is none"),
            ("gp_interval", not objective.has_gradient_penalty, "no gradient penalty is applied"),
            ("twin_margin", objective.caption_twin_weight <= 0 and objective.caption_preference_weight <= 0,
             "both twin hinges are off (caption_twin_weight, caption_preference_weight)"),
            ("word_region_twins", objective.word_region_weight <= 0, "the word-region loss is off"),
            ("swap_from_corpus", objective.swap_weight <= 0, "there are no swapped captions (swap_weight 0)"),
            ("swap_candidates", objective.swap_weight <= 0, "there are no swapped captions (swap_weight 0)"),
            ("swap_captioner_margin", objective.swap_candidates <= 1 or objective.swap_weight <= 0,
             "it filters mined swaps (needs swap_candidates > 1 and swap_weight > 0)"),
            ("word_region_weight_g", objective.word_region_weight <= 0, "the critic has no word-region head"),
            ("word_region_teacher_half_life", objective.generator_word_region_weight <= 0,
             "the generator has no word-region term"),
            ("contrastive_temperature",
             not any(w > 0 for w in (objective.contrastive_weight_d, objective.contrastive_weight_g,
                                     objective.word_region_weight, objective.text_order_weight)),
             "no contrastive loss is on (contrastive_weight_d/_g, word_region_weight, text_order_weight)"),
        ]  # fmt: skip
        lines = []
        for name, ineffective, why in rules:
            group = GROUP_OF[name]
            default = GROUPS[group].__dataclass_fields__[name].default
            if ineffective and getattr(getattr(self, group), name) != default:
                lines.append(f"model.{group}.{name} has no effect: {why}")
        return lines

    def replace(self, **groups: Mapping[str, Any]) -> ModelSettings:
        """These settings with some fields of some groups changed: ``replace(objective={"swap_weight": 0})``."""
        changed = {name: dataclasses.replace(getattr(self, name), **values) for name, values in groups.items()}
        return dataclasses.replace(self, **changed)
