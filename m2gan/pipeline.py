"""The sampling pipeline: text encoder, generator and captioner with their tokenizer, for inference.

:class:`SamplingPipeline` is what users sample from. ``M2GAN`` keeps one as its EMA copy
(``model.ema``), the evaluation callbacks sample through it, and :func:`m2gan.load` returns one
read from a training checkpoint or an export folder. It holds no discriminator and no optimiser
state, and knows nothing of Lightning.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from m2gan import decoding
from m2gan.images import ImageInput, prepare_images, to_uint8
from m2gan.networks import Captioner, Generator, PretrainedTextEncoder, TextEncoder
from m2gan.pretrained import load_pretrained_text
from m2gan.settings import CaptionerSettings, GeneratorSettings, ModelSettings, TextSettings
from m2gan.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, CaptionTokenizer


@dataclass(frozen=True)
class PipelineConfig:
    """The settings that rebuild the sampling networks: the model's shared sizes and the groups of
    its text encoder, generator and captioner (each documented in :mod:`m2gan.settings`)."""

    resolution: int
    vocab_size: int
    max_length: int
    max_channels: int
    channels_last: bool
    text: TextSettings
    generator: GeneratorSettings
    captioner: CaptionerSettings

    @classmethod
    def of(cls, settings: ModelSettings) -> PipelineConfig:
        return cls(*(getattr(settings, f.name) for f in fields(cls)))

    def to_dict(self) -> dict:
        return asdict(self)

    # Each builder makes a fresh, randomly initialised network (M2GAN draws their initial weights in
    # a fixed order, with the discriminator between generator and captioner); a pretrained text
    # model is read from its folder, only its projections are new.

    def make_text_encoder(self) -> TextEncoder | PretrainedTextEncoder:
        t = self.text
        if t.text_encoder is not None:
            source = load_pretrained_text(t.text_encoder)
            return PretrainedTextEncoder(
                source.model,
                source.tokenizer,
                source.kind,
                source.digest,
                self.max_length,
                t.text_width,
                t.sentence_dim,
                (PAD_ID, UNK_ID, BOS_ID, EOS_ID),
                trainable=t.text_encoder_trainable,
                folder=str(source.folder),
            )
        return self._layout(
            TextEncoder(
                self.vocab_size,
                self.max_length,
                t.text_width,
                t.sentence_dim,
                t.text_layers,
                position_std=t.text_position_std,
                architecture=t.text_architecture,
            )
        )

    def make_generator(self) -> Generator:
        g = self.generator
        return self._layout(
            Generator(
                self.resolution,
                g.noise_dim,
                self.text.sentence_dim,
                g.g_channels,
                self.max_channels,
                word_dim=self.text.text_width,
                attention_sides=g.word_attention_sides,
                output=g.generator_output,
                noise_injection=g.noise_injection,
            )
        )

    def make_captioner(self) -> Captioner:
        c = self.captioner
        captioner = Captioner(
            self.resolution,
            self.vocab_size,
            self.max_length,
            width=c.captioner_width,
            num_layers=c.captioner_layers,
            base_channels=c.captioner_channels,
            max_channels=self.max_channels,
        )
        return self._layout(captioner)

    def _layout(self, network: nn.Module) -> nn.Module:
        return network.to(memory_format=torch.channels_last) if self.channels_last else network


MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class WordAttention:
    """One generated image and where each word of its prompt acted on it (:meth:`SamplingPipeline.attention_maps`)."""

    image: torch.Tensor
    """uint8 (3, H, W)."""
    prompt: str
    words: list[str]
    """The prompt's words as the model read them (unknown ones as ``[UNK]``)."""
    maps: dict[int, torch.Tensor]
    """Per attention stage (feature-map side): (len(words), side, side), each word's map summing to 1."""


def whole_number(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int if it is a whole number (not a bool) in [minimum, maximum]; else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be at least {minimum}{upper}, got {value}")
    return int(value)


MAX_FRAMES = 256
"""Most frames of one interpolation or truncation sweep (its strip image stays viewable)."""


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` to ``b`` (D,) at fractions ``t`` (F,): (F, D).

    Gaussian noise lives near a sphere; a straight line between two samples passes through the
    low-norm middle the generator never saw in training, a great circle does not (White, 2016).
    """
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    angle = torch.arccos(cos.clamp(-1, 1))
    if angle < 1e-4:  # (nearly) the same direction: plain blending is exact enough
        return torch.lerp(a, b, t[:, None])
    t = t[:, None]
    return (torch.sin((1 - t) * angle) * a + torch.sin(t * angle) * b) / torch.sin(angle)


def finite_number(name: str, value: object, positive: bool = False) -> float:
    """``value`` as a float if it is a finite real number (and positive if asked); else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value)


class SamplingPipeline(nn.Module):
    """Text → image and image → text with one set of networks (an ``M2GAN``'s EMA copies, usually).

    Args:
        text_encoder: Turns token ids into word features and sentence vectors for the generator.
        generator: Draws images from noise and sentence vectors.
        captioner: Describes images.
        config: The sizes the three were built with (an export writes them beside the weights).
        tokenizer: The tokenizer the token ids come from; sampling needs one.
    """

    def __init__(
        self,
        text_encoder: TextEncoder | PretrainedTextEncoder,
        generator: Generator,
        captioner: Captioner,
        config: PipelineConfig,
        tokenizer: CaptionTokenizer | None = None,
    ) -> None:
        super().__init__()
        self.text_encoder, self.generator, self.captioner = text_encoder, generator, captioner
        self.config = config
        self.tokenizer: CaptionTokenizer | None = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    @classmethod
    def build(cls, config: PipelineConfig, tokenizer: CaptionTokenizer | None = None) -> SamplingPipeline:
        """A pipeline of freshly initialised networks of ``config``'s sizes (weights to be loaded)."""
        return cls(config.make_text_encoder(), config.make_generator(), config.make_captioner(), config, tokenizer)

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def set_tokenizer(self, tokenizer: CaptionTokenizer) -> None:
        """Attach the tokenizer the token ids come from; it must fit the networks' vocabulary and length."""
        self.check_tokenizer(tokenizer)
        self.text_encoder.set_vocabulary(tokenizer.vocabulary())
        self.tokenizer = tokenizer

    def check_tokenizer(self, tokenizer: CaptionTokenizer) -> None:
        """Raise a ValueError unless ``tokenizer`` fits the networks' vocabulary and length."""
        cfg = self.config
        if tokenizer.vocab_size != cfg.vocab_size or tokenizer.max_length != cfg.max_length:
            raise ValueError(
                f"tokenizer (vocab_size={tokenizer.vocab_size}, max_length={tokenizer.max_length}) does not fit "
                f"this model (vocab_size={cfg.vocab_size}, max_length={cfg.max_length})"
            )

    def _require_tokenizer(self) -> CaptionTokenizer:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer: load it from a checkpoint or call set_tokenizer()")
        return self.tokenizer

    # ------------------------------------------------------------------ text -> image

    def noise(
        self, batch_size: int, generator: torch.Generator | None = None, truncation: float | None = None
    ) -> torch.Tensor:
        """Standard normal noise (B, noise_dim) on the pipeline's device, truncated to ``±truncation`` if given.

        Drawn on the CPU, so a seed gives the same noise on every device.
        """
        noise_dim = self.config.generator.noise_dim
        if truncation is None:
            z = torch.randn(batch_size, noise_dim, generator=generator)
        else:
            truncation = finite_number("truncation", truncation, positive=True)
            # Inverse-CDF sampling of the truncated normal: exact, one draw, reproducible with a seed.
            edge = torch.special.ndtr(torch.tensor(-float(truncation), dtype=torch.float64))
            u = torch.rand(batch_size, noise_dim, generator=generator, dtype=torch.float64)
            z = torch.special.ndtri(edge + u * (1 - 2 * edge)).float()
        return z.to(self.device)

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
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {i} is not a string but {type(prompt).__name__}: {prompt!r}")
            if not prompt.strip():
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one word")
        tokenizer = self._require_tokenizer()
        tokens = tokenizer.encode(prompts)
        if (tokens == UNK_ID).any():  # only then is it worth re-reading the prompts word by word
            unknown = sorted({w for p in prompts for w in tokenizer.unknown_words(p)})
            warnings.warn(f"words not in the training vocabulary are ignored as [UNK]: {unknown}", stacklevel=3)
        used = (tokens != PAD_ID).any(dim=0).nonzero()
        return tokens[:, : int(used.max()) + 1]

    def generate(
        self,
        prompts: Sequence[str],
        num_images: int = 1,
        seed: int = 0,
        truncation: float | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Draw images for text prompts.

        Args:
            prompts: Captions to draw; none may be empty.
            num_images: Images per prompt.
            seed: Noise seed (0 to 2**63 - 1). All noise of a call is drawn at once on the CPU, so
                the same seed gives the same images for any ``batch_size`` (on the same device).
            truncation: Truncation trick (BigGAN, DF-GAN): noise drawn from a normal truncated to
                ``[-truncation, truncation]`` — lower values trade variety for fidelity; None = off.
            batch_size: Images per forward pass; None = all at once.

        Returns:
            uint8 tensor (len(prompts) * num_images, 3, H, W) on the CPU, the images of prompt ``i``
            at rows ``i * num_images … (i + 1) * num_images - 1``.
        """
        chunks = list(self.generate_chunks(prompts, num_images, seed, truncation, batch_size))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def generate_chunks(
        self,
        prompts: Sequence[str],
        num_images: int = 1,
        seed: int = 0,
        truncation: float | None = None,
        batch_size: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """:meth:`generate`'s images, ``batch_size`` rows at a time and in row order, so that a caller
        can write them out as they come instead of holding them all; the arguments are checked
        before the first chunk is drawn."""
        tokens = self.encode_prompts(prompts)  # (P, L)
        num_images = whole_number("num_images", num_images, 1)
        seed = whole_number("seed", seed, 0, MAX_SEED)
        rows = tokens.shape[0] * num_images
        step = rows if batch_size is None else whole_number("batch_size", batch_size, 1)
        z = self.noise(rows, torch.Generator().manual_seed(seed), truncation)  # (N, noise_dim): one draw for all
        return self._draw_chunks(tokens.to(self.device), z, num_images, step)

    @torch.inference_mode()
    def _draw_chunks(self, tokens: torch.Tensor, z: torch.Tensor, num_images: int, step: int) -> Iterator[torch.Tensor]:
        for start in range(0, z.shape[0], step):
            stop = min(start + step, z.shape[0])
            first, last = start // num_images, (stop - 1) // num_images  # the prompts of rows start … stop - 1
            chunk_tokens = tokens[first : last + 1]
            words, sentence = self.text_encoder(chunk_tokens)  # (p, L, W), (p, S)
            prompt = torch.arange(start, stop, device=tokens.device) // num_images - first  # each row's prompt
            yield self.draw(z[start:stop], sentence[prompt], words[prompt], (chunk_tokens == PAD_ID)[prompt])

    @torch.inference_mode()
    def interpolate(
        self, prompts: Sequence[str], frames: int = 8, seed: int = 0, truncation: float | None = None
    ) -> torch.Tensor:
        """Frames of a smooth path through the generator's inputs, as uint8 CPU images (frames, 3, H, W).

        * Two or more prompts: a morph from each prompt to the next with one fixed noise vector
          (``generate(prompt, seed=seed)``'s); the text encoder's sentence and word features are
          blended linearly, position by position, and a word position is padding while the nearer
          prompt has no word there. The first and last frames are ``generate``'s images of the
          first and last prompt.
        * One prompt: a noise walk, along the great circle (slerp) from the first to the second
          image of ``generate(prompt, num_images=2, seed=seed)``, which are the end frames.

        ``frames`` (2 to :data:`MAX_FRAMES`) are spread evenly along the whole path, both ends included.
        """
        frames = whole_number("frames", frames, 2, MAX_FRAMES)
        tokens = self.encode_prompts(prompts).to(self.device)  # (P, L)
        seed = whole_number("seed", seed, 0, MAX_SEED)
        words, sentence = self.text_encoder(tokens)  # (P, L, W), (P, S)
        padding = tokens == PAD_ID
        if tokens.shape[0] == 1:
            ends = self.noise(2, torch.Generator().manual_seed(seed), truncation)  # (2, noise_dim)
            t = torch.linspace(0, 1, frames, device=self.device)
            z = slerp(ends[0], ends[1], t)  # (F, noise_dim)
            return self._draw_one_text(z, sentence, words, padding)
        position = torch.linspace(0, tokens.shape[0] - 1, frames, device=self.device)
        start = position.floor().long().clamp(max=tokens.shape[0] - 2)  # (F,) the segment of each frame
        f = (position - start)[:, None]  # (F, 1) how far along its segment
        blend_sentence = torch.lerp(sentence[start], sentence[start + 1], f)  # (F, S)
        blend_words = torch.lerp(words[start], words[start + 1], f[:, :, None])  # (F, L, W)
        blend_padding = torch.where(f < 0.5, padding[start], padding[start + 1])  # (F, L)
        z = self.noise(1, torch.Generator().manual_seed(seed), truncation).expand(frames, -1)
        return self.draw(z, blend_sentence, blend_words, blend_padding)

    @torch.inference_mode()
    def truncation_sweep(self, prompt: str, truncations: Sequence[float], seed: int = 0) -> torch.Tensor:
        """``generate(prompt, seed=seed, truncation=ψ)`` for each ψ, as uint8 CPU images (len(truncations), 3, H, W).

        The truncated noise comes from the same uniform draws for every ψ, so the frames show one
        sample moving from the mode (small ψ: less variety, cleaner) to the tails (large ψ).
        """
        if not 1 <= len(truncations) <= MAX_FRAMES:
            raise ValueError(f"truncation sweep: give 1 to {MAX_FRAMES} values, got {len(truncations)}")
        tokens = self.encode_prompts([prompt]).to(self.device)
        seed = whole_number("seed", seed, 0, MAX_SEED)
        words, sentence = self.text_encoder(tokens)
        z = torch.cat([self.noise(1, torch.Generator().manual_seed(seed), psi) for psi in truncations])
        return self._draw_one_text(z, sentence, words, tokens == PAD_ID)

    def _draw_one_text(
        self, z: torch.Tensor, sentence: torch.Tensor, words: torch.Tensor, padding: torch.Tensor
    ) -> torch.Tensor:
        """Images for each noise row of ``z`` (N, noise_dim) and one prompt's features (1, S), (1, L, W), (1, L)."""
        n = z.shape[0]
        return self.draw(z, sentence.expand(n, -1), words.expand(n, -1, -1), padding.expand(n, -1))

    @property
    def has_word_attention(self) -> bool:
        """Whether the generator attends to the caption's words (``word_attention_sides``)."""
        return len(self.generator.attention) > 0

    @torch.inference_mode()
    def attention_maps(
        self, prompts: Sequence[str], num_images: int = 1, seed: int = 0, truncation: float | None = None
    ) -> list[WordAttention]:
        """Where each word of a prompt acted on its image, at each word-attention stage of the generator.

        The images are ``generate(prompts, num_images, seed, truncation)``'s, in its order. A word's
        map is its attention weight at every position of the stage's feature map, normalised to sum
        to one over the positions; ``[BOS]``, ``[EOS]`` and padding have no map.

        Raises:
            ValueError: the generator has no word attention (``word_attention_sides`` is empty).
        """
        if not self.has_word_attention:
            raise ValueError("this generator has no word attention (word_attention_sides is empty): nothing to map")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = self.encode_prompts(prompts)  # (P, L)
        num_images = whole_number("num_images", num_images, 1)
        seed = whole_number("seed", seed, 0, MAX_SEED)
        rows = tokens.shape[0] * num_images
        z = self.noise(rows, torch.Generator().manual_seed(seed), truncation)  # generate's noise
        row_tokens = tokens.repeat_interleave(num_images, dim=0).to(self.device)  # (N, L)
        words, sentence = self.text_encoder(row_tokens)
        weights: dict[int, torch.Tensor] = {}
        images = to_uint8(self.generator(z, sentence, words, row_tokens == PAD_ID, attention_maps=weights)).cpu()
        tokenizer, special = self._require_tokenizer(), torch.tensor([PAD_ID, BOS_ID, EOS_ID])
        maps = []
        for n in range(rows):
            keep = ~torch.isin(row_tokens[n].cpu(), special)  # (L,) the prompt's words
            per_stage = {}
            for side, w in weights.items():  # w: (N, side * side, L)
                word_maps = w[n].T[keep].float().cpu()  # (words, side * side)
                per_stage[side] = (word_maps / word_maps.sum(1, keepdim=True)).view(-1, side, side)
            ids = row_tokens[n].cpu()[keep].tolist()
            maps.append(WordAttention(images[n], prompts[n // num_images], tokenizer.words(ids), per_stage))
        return maps

    @torch.inference_mode()
    def generate_rows(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """One image per prompt, each from the noise of its own seed (so an image does not depend on its batch)."""
        tokens = self.encode_prompts(prompts).to(self.device)
        words, sentence = self.text_encoder(tokens)
        z = torch.cat([self.noise(1, torch.Generator().manual_seed(int(seed))) for seed in seeds])
        return self.draw(z, sentence, words, tokens == PAD_ID)

    def draw(
        self,
        z: torch.Tensor,
        sentence: torch.Tensor,
        words: torch.Tensor,
        padding: torch.Tensor,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """uint8 CPU images (N, 3, H, W) for noise (N, noise_dim), sentence vectors (N, S) and words (N, L, W)."""
        step = batch_size or z.shape[0]
        chunks = [
            self.generator(z[i : i + step], sentence[i : i + step], words[i : i + step], padding[i : i + step])
            for i in range(0, z.shape[0], step)
        ]
        images = chunks[0] if len(chunks) == 1 else torch.cat(chunks)  # (N, 3, H, W) in [-1, 1]
        return to_uint8(images).cpu().contiguous()  # a channels-last generator's output is NHWC in memory

    # ------------------------------------------------------------------ image -> text

    @torch.inference_mode()
    def caption(
        self,
        images: torch.Tensor | Sequence[ImageInput] | ImageInput,
        num_beams: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
        length_penalty: float = 1.0,
    ) -> list[str]:
        """Describe images.

        Args:
            images: A tensor (N, 3, H, W) or (3, H, W), uint8 in [0, 255] or float in [-1, 1]
                (resized to the model's resolution), or image files / PIL images (converted to RGB,
                shorter side resized, centre-cropped).
            num_beams: 1 decodes greedily (or samples, see ``temperature``); more runs beam search.
            temperature: With ``num_beams=1``, a positive value samples tokens at this temperature.
            seed: Seed of the sampling (``temperature > 0``).
            length_penalty: Beam search ranks captions by log-probability / length ** this.

        Returns:
            One caption per image.
        """
        tokenizer = self._require_tokenizer()
        num_beams, seed = whole_number("num_beams", num_beams, 1), whole_number("seed", seed, 0, MAX_SEED)
        temperature, length_penalty = (
            finite_number("temperature", temperature),
            finite_number("length_penalty", length_penalty),
        )
        if temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or positive, got {temperature}")
        if num_beams > 1 and temperature > 0:
            raise ValueError("choose beam search (num_beams > 1) or sampling (temperature > 0), not both")
        pixels = prepare_images(images, self.resolution).to(self.device)
        if num_beams > 1:
            tokens = decoding.beam_search(
                self.captioner, pixels, BOS_ID, EOS_ID, PAD_ID, num_beams=num_beams, length_penalty=length_penalty
            )
        else:
            generator = torch.Generator(self.device).manual_seed(seed)
            tokens = decoding.sample(
                self.captioner, pixels, BOS_ID, EOS_ID, PAD_ID, temperature=temperature, generator=generator
            )
        return [tokenizer.decode(row) for row in tokens.cpu()]
