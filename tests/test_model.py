"""The M2GAN module: training steps update what they should, sampling behaves as documented."""

from __future__ import annotations

import itertools

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from m2gan.data import CaptionDataModule
from m2gan.model import M2GAN
from m2gan.objective import Twins
from tests.helpers import TINY_MODEL, model_of


def _fit(model, datamodule, batches: int) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule)
    return trainer


def test_generate_returns_uint8_images_per_prompt(tiny_model):
    images = tiny_model.ema.generate(
        ["a red circle at the left", "a small blue square at the top"], num_images=3, seed=0
    )
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8


def test_same_seed_same_images_other_seed_other_images(tiny_model):
    prompts = ["a red circle at the left"]
    assert torch.equal(tiny_model.ema.generate(prompts, 2, seed=1), tiny_model.ema.generate(prompts, 2, seed=1))
    assert not torch.equal(tiny_model.ema.generate(prompts, 2, seed=1), tiny_model.ema.generate(prompts, 2, seed=2))


@pytest.mark.parametrize("prompts", [[""], ["a red circle", "   "], []])
def test_empty_prompts_are_refused(tiny_model, prompts):
    with pytest.raises(ValueError, match="empty|no prompts"):
        tiny_model.ema.generate(prompts)


def test_unknown_words_warn(tiny_model):
    with pytest.warns(UserWarning, match="zebra"):
        tiny_model.ema.generate(["a red zebra"])


def test_a_model_without_tokenizer_says_so(datamodule):
    model = model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, **TINY_MODEL)
    with pytest.raises(RuntimeError, match="no tokenizer"):
        model.ema.generate(["a red circle"])


def test_training_updates_networks_text_encoder_and_ema(datamodule, tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    _fit(tiny_model, datamodule, batches=4)
    after = tiny_model.state_dict()
    prefixes = ("generator.", "discriminator.", "text_encoder.", "captioner.")
    for prefix in prefixes + tuple(f"ema.{p}" for p in prefixes if p != "discriminator."):
        changed = [k for k in after if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        assert changed, f"no parameter of {prefix} changed"
    assert int(tiny_model.d_steps) == 4 and int(tiny_model.g_steps) == 4
    # The EMA generator averages, it does not copy.
    assert not torch.equal(tiny_model.ema.generator.fc.weight, tiny_model.generator.fc.weight)


def test_n_critic_makes_fewer_generator_steps(datamodule):
    model = model_of(
        vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, n_critic=2, grad_clip=0.5, **TINY_MODEL
    )
    trainer = _fit(model, datamodule, batches=4)
    assert (int(model.d_steps), int(model.g_steps)) == (4, 2)
    assert trainer.global_step == 6  # Lightning counts every optimizer step


@pytest.mark.parametrize("penalty", ["r1", "ma_gp"])
def test_gradient_penalties_change_the_discriminator_and_skip_no_step(datamodule, penalty):
    discriminators = {}
    for gp_weight in (0.0, 10.0):
        torch.manual_seed(0)
        model = model_of(
            vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, gradient_penalty=penalty,
            gp_weight=gp_weight, gp_interval=1, **TINY_MODEL,
        )  # fmt: skip
        _fit(model, datamodule, batches=2)
        assert int(model.skipped_steps) == 0  # a NaN penalty would be skipped by the guard, not crash
        discriminators[gp_weight] = model.discriminator.state_dict()
    # same seed, same data: only the penalty can make the two runs' discriminators differ
    assert any(not torch.equal(v, discriminators[10.0][k]) for k, v in discriminators[0.0].items())


def test_wrong_tokenizer_is_refused(tiny_model):
    other = CaptionDataModule(max_length=12, tokenizer_fit_size=50).tokenizer
    with pytest.raises(ValueError, match="does not fit"):
        tiny_model.set_tokenizer(other)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resolution": 48}, "power of two"),
        ({"lr_g": -1.0}, "lr_g"),
        ({"n_critic": 0}, "n_critic"),
        ({"caption_weight": 0.0, "cycle_weight": 1.0}, "untrained captioner"),
        ({"binding_negative_share": 1.5}, "binding_negative_share"),
        ({"binding_negative_share": 0.5, "swap_weight": 0.0}, "needs model.objective.swap_weight"),
        ({"swap_candidates": 0}, "swap_candidates"),
        ({"augment_translation": -0.1}, "augment_translation"),
    ],
)
def test_bad_hyper_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model_of(**kwargs)


def test_missing_checkpoint_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        M2GAN.load(tmp_path / "nope.ckpt")


def test_a_checkpoint_that_does_not_fit_is_one_clear_error(tiny_model, tmp_path):
    from m2gan.checkpoint_io import TOKENIZER_KEY, CheckpointError

    state = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith("discriminator.")}
    checkpoint = {"hyper_parameters": dict(tiny_model.hparams), TOKENIZER_KEY: tiny_model.tokenizer.to_json()}
    torch.save({**checkpoint, "state_dict": state}, tmp_path / "cut.ckpt")
    with pytest.raises(CheckpointError, match=r"cut.ckpt: does not fit .*missing weights of discriminator"):
        M2GAN.load(tmp_path / "cut.ckpt")
    torch.save({**checkpoint, "state_dict": state, "hyper_parameters": {"warp_drive": 9}}, tmp_path / "new.ckpt")
    with pytest.raises(CheckpointError, match=r"unknown model setting 'warp_drive'"):
        M2GAN.load(tmp_path / "new.ckpt")


def test_checkpoint_from_other_data_is_refused(tiny_model):
    from m2gan.model import TOKENIZER_KEY
    from m2gan.tokenizer import CaptionTokenizer

    other = CaptionTokenizer.fit(["entirely different words here"], max_length=tiny_model.hparams.max_length)
    with pytest.raises(ValueError, match="tokenizer differs"):
        tiny_model.on_load_checkpoint({TOKENIZER_KEY: other.to_json()})
    with pytest.raises(ValueError, match="not written by M2GAN"):
        tiny_model.on_load_checkpoint({})


def test_cycle_loss_trains_the_generator_through_a_frozen_captioner(tiny_model, datamodule):
    from m2gan import losses
    from m2gan.objective import frozen
    from m2gan.tokenizer import PAD_ID

    tokens = datamodule.tokenizer.encode(["a red circle at the left", "a big blue square at the top"])
    _, sentence = tiny_model.text_encoder(tokens)
    fake = tiny_model.generator(tiny_model.ema.noise(2), sentence.detach())
    with frozen(tiny_model.captioner):
        cycle = losses.caption_cross_entropy(tiny_model.captioner(fake, tokens), tokens, PAD_ID)
    cycle.backward()
    grads = [p.grad for p in tiny_model.generator.parameters()]
    assert all(g is not None for g in grads)
    # Most parameters move (the zero-initialised modulation heads block the gradient of the layer before).
    assert sum(bool(g.abs().sum() > 0) for g in grads) > 0.6 * len(grads)
    assert all(p.grad is None for p in tiny_model.captioner.parameters())
    assert all(p.requires_grad for p in tiny_model.captioner.parameters())  # unfrozen afterwards


def test_adversarial_caption_loss_trains_the_captioner(datamodule):
    model = model_of(
        vocab_size=datamodule.vocab_size,
        max_length=datamodule.max_length,
        caption_weight=0.0,
        cycle_weight=0.0,
        caption_adversarial_weight=1.0,
        **TINY_MODEL,
    )
    before = model.captioner.to_logits.weight.clone()
    _fit(model, datamodule, batches=2)
    assert not torch.equal(before, model.captioner.to_logits.weight)  # only the adversarial term can move it
    assert int(model.skipped_steps) == 0


def test_caption_returns_one_string_per_image(tiny_model, datamodule):
    images = torch.stack([datamodule.datasets["val"][i]["image"] for i in range(3)])
    greedy = tiny_model.ema.caption(images)
    assert len(greedy) == 3 and all(isinstance(c, str) for c in greedy)
    as_uint8 = ((images + 1) * 127.5).round().to(torch.uint8)
    assert tiny_model.ema.caption(as_uint8, num_beams=1) == tiny_model.ema.caption(images, num_beams=1)
    assert len(tiny_model.ema.caption(images[0], num_beams=3)) == 1
    assert tiny_model.ema.caption(images, temperature=2.0, seed=1) == tiny_model.ema.caption(
        images, temperature=2.0, seed=1
    )


def test_caption_reads_image_files(tiny_model, tmp_path):
    from PIL import Image

    Image.new("RGB", (90, 60), "red").save(tmp_path / "wide.png")
    Image.new("L", (40, 40), 128).save(tmp_path / "grey.jpg")
    assert len(tiny_model.ema.caption([tmp_path / "wide.png", str(tmp_path / "grey.jpg")])) == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda d: (d / "notes.png").write_text("not an image") and d / "notes.png",
            r"notes\.png: not a readable image",
        ),
        (lambda d: Image.new("RGB", (4, 30)).save(d / "tiny.png") or d / "tiny.png", r"tiny\.png: image is 4x30"),
        (lambda d: d / "absent.png", r"absent\.png: no such file"),
        (lambda d: torch.zeros(2, 1, 32, 32), "must be RGB"),
        (lambda d: torch.zeros(2, 4, 32, 32, dtype=torch.uint8), "must be RGB"),
    ],
)
def test_bad_images_to_caption_are_clear_errors(tiny_model, tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.ema.caption(make(tmp_path))


def test_prompts_drop_padding_columns_without_changing_the_text_encoding(tiny_model):
    prompts = ["a red circle", "a big blue square at the top"]
    tokens, full = tiny_model.ema.encode_prompts(prompts), tiny_model.tokenizer.encode(prompts)
    assert tokens.shape[1] == 9 < full.shape[1]  # [BOS] + 7 words + [EOS]
    with torch.inference_mode():
        torch.testing.assert_close(tiny_model.ema.text_encoder(tokens)[1], tiny_model.ema.text_encoder(full)[1])


def test_non_square_image_tensors_are_centre_cropped_like_files():
    from m2gan.images import prepare_images

    images = torch.rand(1, 3, 32, 48) * 2 - 1
    torch.testing.assert_close(prepare_images(images, 32), images[..., 8:40])


def test_ema_averages_parameters_and_copies_buffers(tiny_model):
    from m2gan.ema import update_ema

    # BatchNorm-type buffers are running statistics of the *current* network: averaging them with
    # stale ones would mismatch the averaged weights, so they are copied (as StyleGAN2-ADA does).
    current, average = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    current.weight.data.fill_(1.0), average.weight.data.fill_(0.0)
    current.running_mean.fill_(5.0)
    update_ema(average, current, beta=0.75)
    torch.testing.assert_close(average.weight.data, torch.full((3,), 0.25))
    torch.testing.assert_close(average.running_mean, torch.full((3,), 5.0))
    # Only the generator side is averaged; the discriminator has no EMA copy.
    averaged = {name for name, _ in tiny_model.ema.named_children()}
    assert averaged == {"generator", "text_encoder", "captioner"}


def test_channels_last_is_a_layout_not_a_different_model(datamodule):
    """The default channels-last weights compute what contiguous ones do, and checkpoints move between them."""

    def build(channels_last: bool) -> M2GAN:
        torch.manual_seed(0)
        model = model_of(
            vocab_size=datamodule.vocab_size,
            max_length=datamodule.max_length,
            channels_last=channels_last,
            **TINY_MODEL,
        )
        model.set_tokenizer(datamodule.tokenizer)
        return model.eval()

    nhwc, nchw = build(True), build(False)
    conv = nhwc.generator.to_rgb.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert nchw.generator.to_rgb.weight.is_contiguous()
    nchw.load_state_dict(nhwc.state_dict())  # values, not strides, travel in a state dict
    prompts = ["a red circle at the left", "a small blue square at the top"]
    a, b = nhwc.ema.generate(prompts, num_images=2, seed=3), nchw.ema.generate(prompts, num_images=2, seed=3)
    assert a.is_contiguous()  # callers may .numpy() or save the rows without a copy
    assert (a.int() - b.int()).abs().max() <= 1  # summation order may move a pixel by one level


def test_training_metrics_reach_the_loggers_every_log_interval(datamodule, tiny_model, tmp_path):
    """train/* metrics go to the loggers, and the losses to the progress bar, every ``log_every_n_steps`` batches."""
    import csv

    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(tmp_path)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=5, limit_val_batches=0, log_every_n_steps=2, logger=logger,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(tiny_model, datamodule)
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/d_loss")]
    # Batches 2 and 4 by the interval, batch 5 because training ended there.
    assert [int(row["step"]) for row in rows] == [2, 4, 5]
    for row in rows:
        for name in ("train/d_loss", "train/g_loss", "train/d_adv", "train/cycle", "train/match_acc"):
            assert torch.isfinite(torch.tensor(float(row[name]))), name
    assert "train/d_loss" not in trainer.callback_metrics  # by design: monitor val/* metrics
    # The progress bar shows the losses of the last logged batch (4), not of every batch.
    step_4 = next(row for row in rows if int(row["step"]) == 4)
    for name in ("d_loss", "g_loss"):
        assert trainer.progress_bar_metrics[name] == float(step_4[f"train/{name}"])


def test_word_attention_trains_its_gates_and_survives_export(datamodule, tmp_path):
    from m2gan.export import export, load

    model = model_of(
        vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, word_attention_sides=(8, 16), **TINY_MODEL
    )
    _fit(model, datamodule, batches=3)
    gates = [float(attention.gate) for attention in model.generator.attention.values()]
    assert len(gates) == 2 and all(gate != 0 for gate in gates)  # the generator's loss opened them
    prompts = ["a red circle at the left", "a small blue square at the top"]
    export(model.ema, tmp_path / "export")
    loaded = load(tmp_path / "export")
    assert loaded.config.generator.word_attention_sides == (8, 16)
    assert torch.equal(loaded.generate(prompts, 2, seed=1), model.ema.generate(prompts, 2, seed=1))


def test_noise_injection_trains_its_strengths_and_survives_export(datamodule, tmp_path):
    from m2gan.export import export, load

    model = model_of(
        vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, noise_injection=True, **TINY_MODEL
    )
    _fit(model, datamodule, batches=3)
    strengths = list(model.ema.generator.noise_strength.values())
    assert strengths and all(s.abs().sum() > 0 for s in strengths)  # trained, and carried into the EMA copy
    prompts = ["a red circle at the left", "a small blue square at the top"]
    export(model.ema, tmp_path / "export")
    loaded = load(tmp_path / "export")
    assert loaded.config.generator.noise_injection
    assert torch.equal(loaded.generate(prompts, 2, seed=1), model.ema.generate(prompts, 2, seed=1))
    assert not torch.equal(loaded.generate(prompts, 2, seed=2), model.ema.generate(prompts, 2, seed=1))


def test_word_region_matching_trains_the_discriminator_head_and_reaches_the_generator(datamodule, tmp_path):
    import csv

    from pytorch_lightning.loggers import CSVLogger

    model = model_of(
        vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, word_region_weight=1.0, **TINY_MODEL
    )
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items() if "projection" in k}
    assert {k.split(".")[0] for k in before} == {"text_projection", "region_projection", "word_projection"}
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=0, log_every_n_steps=1, logger=CSVLogger(tmp_path),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule)
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as file:
        logged = [row for row in csv.DictReader(file) if row.get("train/d_loss")]
    for name in ("train/d_word_region", "train/g_word_region"):  # both sides' terms are computed and logged
        assert all(0 < float(row[name]) < 10 for row in logged), name
    for name in ("region_projection.weight", "word_projection.weight"):
        assert not torch.equal(before[name], model.discriminator.state_dict()[name]), name


def test_binding_negatives_reach_the_discriminator_as_swapped_captions(datamodule):
    from m2gan.negatives import hard_negatives
    from m2gan.tokenizer import SPECIAL_TOKENS

    captions = ["a red circle left of a blue square", "a blue circle left of a red square", "a red square"] * 4
    tokens = datamodule.tokenizer.encode(captions)
    images = torch.zeros(len(captions), 3, 32, 32)
    for share in (0.0, 1.0):
        model = model_of(
            vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, binding_negative_share=share,
            **TINY_MODEL,
        )  # fmt: skip
        torch.manual_seed(0)
        swapped = model.objective.discriminator_loss(images, tokens, penalty=False).text.swapped_sentence
        torch.manual_seed(0)
        expected = hard_negatives(tokens, len(SPECIAL_TOKENS), share)
        assert torch.allclose(swapped, model.text_encoder(expected)[1])
        if share == 1.0:  # the two-object captions had their colours or nouns exchanged, same words
            assert all(sorted(expected[i].tolist()) == sorted(tokens[i].tolist()) for i in (0, 1))
            assert not torch.equal(expected[:2], tokens[:2])


class _CaptionHashText(torch.nn.Module):
    """Stand-in text encoder: the sentence vector one-hot encodes the caption, in order or as a bag of
    words; each word's feature one-hot encodes the word with its place (in order) or alone (a bag)."""

    def __init__(self, ordered: bool) -> None:
        super().__init__()
        self.ordered = ordered

    def forward(self, tokens):
        rows = tokens.tolist() if self.ordered else [sorted(row) for row in tokens.tolist()]
        sentence = torch.zeros(len(rows), 997)
        sentence[torch.arange(len(rows)), torch.tensor([hash(tuple(row)) % 997 for row in rows])] = 1.0
        codes = [[hash((t, i) if self.ordered else t) % 251 for i, t in enumerate(row)] for row in tokens.tolist()]
        return torch.nn.functional.one_hot(torch.tensor(codes), 251).float(), sentence  # (B, L, 251), (B, 997)


class _CaptionReader(torch.nn.Module):
    """Stand-in critic: each image carries its caption's sentence vector; it scores their agreement. Its
    word-region head sees the caption's words, read by ``text`` (as ``text`` reads words), as the regions."""

    has_regions = True

    def __init__(self, text: _CaptionHashText) -> None:
        super().__init__()
        self.text = text

    def features(self, images):
        return images.flatten(1)[:, :997], torch.zeros(images.shape[0])

    def features_and_regions(self, images):
        return self.features(images), self.text(images.flatten(1)[:, 997:].round().long())[0]

    def embed_text(self, sentence):
        return sentence

    def embed_words(self, words):
        return words

    score = staticmethod(__import__("m2gan.networks", fromlist=["Discriminator"]).Discriminator.score)


class _StandInCaptioner(torch.nn.Module):
    """Stand-in captioner: each image carries its caption's tokens; it predicts them in order, or
    every position as the caption's bag of words."""

    def __init__(self, ordered: bool, vocab_size: int) -> None:
        super().__init__()
        self.ordered, self.vocab_size = ordered, vocab_size

    def encode(self, images):
        return images.flatten(1)[:, 997:].round().long()[:, :, None]  # (B, L, 1): the caption's tokens

    def decode(self, memory, prefix):
        own = torch.nn.functional.one_hot(memory[:, :, 0], self.vocab_size).float()  # (B, L, V)
        if self.ordered:  # position t predicts the caption's token t + 1
            return 5 * own[:, 1 : prefix.shape[1] + 1]
        return own.sum(1, keepdim=True).expand(-1, prefix.shape[1], -1)  # the same bag everywhere


@pytest.mark.parametrize("ordered, accuracy, cosine, distance", [(True, 1.0, 0.0, 1.0), (False, 0.5, 1.0, 0.0)])
def test_binding_meters_are_one_for_models_that_bind_and_half_for_bags_of_words(
    datamodule, ordered, accuracy, cosine, distance
):
    from m2gan.negatives import TWIN_KINDS, WordPairs

    model = model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, **TINY_MODEL)
    objective = model.objective
    objective.text_encoder = _CaptionHashText(ordered)
    objective.discriminator = _CaptionReader(objective.text_encoder)
    captions = [
        "a small red circle left of a large blue square", "a large green triangle above a small cyan cross",
        "a small red circle at the left",
    ]  # fmt: skip
    tokens = datamodule.tokenizer.encode(captions)
    corpus = [  # each caption with any of its sizes, colours and nouns exchanged: every word seen in the other's place
        f"a {s1} {c1} {n1} {relation} a {s2} {c2} {n2}"
        for sizes, colours, nouns, relation in (
            (("small", "large"), ("red", "blue"), ("circle", "square"), "left of"),
            (("large", "small"), ("green", "cyan"), ("triangle", "cross"), "above"),
        )
        for (s1, s2), (c1, c2), (n1, n2) in itertools.product(
            (sizes, sizes[::-1]), (colours, colours[::-1]), (nouns, nouns[::-1])
        )
    ]
    objective.word_pairs = WordPairs.of(datamodule.tokenizer.encode(corpus), datamodule.vocab_size)
    # Each image "shows" its caption: its sentence code (for the critic) and its tokens (for the captioner).
    images = torch.cat([_CaptionHashText(ordered=True)(tokens)[1], tokens.float()], 1).reshape(3, 1, 1, -1)
    captioner = _StandInCaptioner(ordered, datamodule.vocab_size)
    metrics = objective.binding_metrics(images, tokens, captioner, fake=images)
    meters = ("binding_acc", "twin_cosine", "twin_distance", "caption_binding", "caption_binding_fake",
              "region_binding", "region_binding_fake")  # fmt: skip
    assert set(metrics) == {f"{what}/{kind}" for what in meters for kind in TWIN_KINDS}
    for kind in TWIN_KINDS:
        assert metrics[f"binding_acc/{kind}"] == (pytest.approx(accuracy), 2)  # the one-object caption has none
        assert metrics[f"twin_cosine/{kind}"] == (pytest.approx(cosine), 2)
        # One-hot codes: a twin is as far as another caption when read in order, the same point as a bag.
        assert metrics[f"twin_distance/{kind}"] == (pytest.approx(distance), 2)
        assert metrics[f"caption_binding/{kind}"] == (pytest.approx(accuracy), 2)
        assert metrics[f"caption_binding_fake/{kind}"] == (pytest.approx(accuracy), 2)
        assert metrics[f"region_binding/{kind}"] == (pytest.approx(accuracy), 2)  # words in their place, or a bag
        assert metrics[f"region_binding_fake/{kind}"] == (pytest.approx(accuracy), 2)


def test_the_corpus_word_pairs_travel_in_the_checkpoint(datamodule, tiny_model, tmp_path):
    from m2gan.checkpoint_io import WORD_PAIRS_KEY

    trainer = _fit(tiny_model, datamodule, batches=1)
    pairs = tiny_model.objective.word_pairs
    assert torch.equal(pairs.codes, datamodule.word_pairs.codes) and len(pairs.codes) > 50  # from the data module
    checkpoint = {"state_dict": tiny_model.state_dict()}
    tiny_model.on_save_checkpoint(checkpoint)
    resumed = model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, **TINY_MODEL)
    resumed.on_load_checkpoint(checkpoint)
    assert torch.equal(resumed.objective.word_pairs.codes, pairs.codes)
    assert resumed.objective.word_pairs.vocab_size == pairs.vocab_size
    trainer.save_checkpoint(tmp_path / "saved.ckpt")  # Lightning's own save path too
    saved = torch.load(tmp_path / "saved.ckpt", weights_only=True)[WORD_PAIRS_KEY]
    assert torch.equal(saved, pairs.to_tensor())


def test_validation_logs_the_binding_meters(datamodule, tiny_model):
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(tiny_model, datamodule)
    for kind in ("attribute", "relation"):
        for meter in ("binding_acc", "caption_binding", "caption_binding_fake"):
            assert 0.0 <= float(trainer.callback_metrics[f"val/{meter}/{kind}"]) <= 1.0
        assert -1.0 <= float(trainer.callback_metrics[f"val/twin_cosine/{kind}"]) <= 1.0
        assert float(trainer.callback_metrics[f"val/twin_distance/{kind}"]) > 0


def _mining_model(datamodule):
    model = model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, swap_candidates=6,
                     swap_from_corpus=True, **TINY_MODEL)  # fmt: skip
    model.objective.word_pairs = datamodule.word_pairs
    captions = ["a large red circle in the top left", "a small blue square at the bottom", "a red circle"] * 3
    return (
        model,
        datamodule.tokenizer.encode(captions),
        torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1,
    )


def test_the_hardest_swap_is_the_drawn_swap_the_critic_scores_highest(datamodule):
    """Mining: of the K drawn swaps of each caption, the one the critic scores highest with its real
    image; and the swapped sentence the critic's loss reads is that caption's."""
    model, tokens, images = _mining_model(datamodule)
    d, objective = model.discriminator, model.objective
    with torch.no_grad():
        real = d.features(images)
        torch.manual_seed(0)
        drawn = torch.stack([objective.swaps(tokens) for _ in range(6)])  # what hardest_swaps draws
        scores = torch.stack([d.score(real, d.embed_text(model.text_encoder(t)[1])) for t in drawn])  # (K, B)
        torch.manual_seed(0)
        chosen = objective.hardest_swaps(tokens, images, real)
    for row in range(len(tokens)):
        match = [k for k in range(6) if torch.equal(drawn[k, row], chosen[row])]
        assert match and torch.isclose(scores[match[0], row], scores[:, row].max())
    assert not all(torch.equal(chosen[r], drawn[0, r]) for r in range(len(tokens)))  # not merely the first draw
    torch.manual_seed(0)
    swapped = objective.discriminator_loss(images, tokens, penalty=False).text.swapped_sentence
    assert torch.allclose(swapped, model.text_encoder(chosen)[1], atol=1e-6)


def test_a_swap_that_changed_nothing_is_mined_only_when_every_draw_did(datamodule, monkeypatch):
    model, tokens, images = _mining_model(datamodule)
    other = tokens.roll(1, 0)
    draws = iter([tokens, other] * 3)  # the unchanged caption first, whatever the critic scores it
    monkeypatch.setattr(model.objective, "swaps", lambda t: next(draws))
    with torch.no_grad():
        real = model.discriminator.features(images)
        assert torch.equal(model.objective.hardest_swaps(tokens, images, real), other)
        monkeypatch.setattr(model.objective, "swaps", lambda t: t)
        assert torch.equal(model.objective.hardest_swaps(tokens, images, real), tokens)


def test_mining_skips_swaps_the_captioner_finds_as_likely_as_the_caption(datamodule, monkeypatch):
    """With a captioner margin, a swap the captioner reads as a synonym is never mined, whatever the
    critic scores it; where no draw is verified, the first changed draw stands."""
    import dataclasses

    model, tokens, images = _mining_model(datamodule)
    unlikely = int(tokens.max()) + 1  # a word id the stand-in captioner finds unlikely in any image
    synonym, verified = tokens.clone(), tokens.clone()
    synonym[:, 1], verified[:, 1] = unlikely + 1, unlikely

    def decode(memory, texts):  # every word equally likely, but for ``unlikely``
        logits = torch.zeros(*texts.shape, datamodule.vocab_size + 8)
        logits[..., unlikely] = -20.0
        return logits

    monkeypatch.setattr(model.captioner, "encode", lambda images: torch.zeros(len(images), 4, 8))
    monkeypatch.setattr(model.captioner, "decode", decode)
    model.objective.config = dataclasses.replace(model.objective.config, swap_captioner_margin=1.0)
    with torch.no_grad():
        real = model.discriminator.features(images)
        draws = iter([tokens, synonym, verified] * 2)
        monkeypatch.setattr(model.objective, "swaps", lambda t: next(draws))
        assert torch.equal(model.objective.hardest_swaps(tokens, images, real), verified)
        other_synonym = synonym.clone()
        other_synonym[:, 1] = unlikely + 2
        draws = iter([tokens, synonym, other_synonym] * 2)  # nothing verified: the first changed draw
        assert torch.equal(model.objective.hardest_swaps(tokens, images, real), synonym)


def _two_object_batch(datamodule, model):
    """A two-object caption with twins of every kind (in the data's word pairs) for eight random images."""
    model.objective.word_pairs = datamodule.word_pairs
    tokens = datamodule.tokenizer.encode(["a small red circle left of a large blue square"] * 8)
    return torch.rand(len(tokens), 3, 32, 32) * 2 - 1, tokens


def _gradients_with_and_without(model, images, tokens, **weights):
    """Each parameter's gradient of the generator step's loss with ``weights`` set and with them at 0
    (same noise); the D step's text is computed once."""
    import dataclasses

    config = model.objective.config
    model.objective.config = dataclasses.replace(config, **weights)
    text = model.objective.discriminator_loss(images, tokens, penalty=False).text
    grads, logs = [], []
    for on in (True, False):
        model.objective.config = dataclasses.replace(config, **{k: v if on else 0.0 for k, v in weights.items()})
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = model.objective.generator_loss(images, text)
        loss.loss.backward()
        grads.append({n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()})
        logs.append(loss.logs)
    model.objective.config = config
    return logs[0], *grads


def _changed(with_term, without, prefix):
    return [n for n in with_term if n.startswith(prefix) and not _same(with_term[n], without[n])]


def _same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize(
    "weight, log, trained, untouched",
    [
        # The teacher term: the captioner judges, frozen; the text encoder and the critic are not in it.
        ("caption_preference_weight", "caption_preference", "generator.", ("captioner.", "text_encoder.")),
        # The captioner's own twin term on real pairs.
        ("caption_twin_weight", "caption_twin", "captioner.", ("generator.", "text_encoder.")),
    ],
)
def test_each_twin_term_trains_only_its_player(datamodule, weight, log, trained, untouched):
    """With a margin no pair meets (so the hinge always pushes), the term changes the gradients of
    the one player it is meant for and of nothing else."""
    import dataclasses

    model = model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, **TINY_MODEL)
    images, tokens = _two_object_batch(datamodule, model)
    model.objective.config = dataclasses.replace(model.objective.config, twin_margin=100.0)
    assert len(Twins.of(tokens, model.objective.word_pairs).rows) == len(tokens) * 3  # a twin of each kind each
    logs, with_term, without = _gradients_with_and_without(model, images, tokens, **{weight: 1.0})
    assert logs[f"train/{log}"] > 90  # summed log-likelihoods: every pair is inside the margin
    assert _changed(with_term, without, trained)
    for player in (*untouched, "discriminator.", "ema."):
        assert not _changed(with_term, without, player), player


def test_the_mode_seeking_term_trains_only_the_generator(datamodule):
    model = model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, **TINY_MODEL)
    images, tokens = _two_object_batch(datamodule, model)
    logs, with_term, without = _gradients_with_and_without(model, images, tokens, mode_seeking_weight=1.0)
    assert logs["train/g_mode_seeking"] > 0
    assert _changed(with_term, without, "generator.")
    for player in ("text_encoder.", "captioner.", "discriminator.", "ema."):
        assert not _changed(with_term, without, player), player
    with pytest.raises(ValueError, match="mode_seeking_weight must not be negative"):
        model_of(mode_seeking_weight=-1.0)


def test_the_text_order_loss_reads_paraphrases_and_trains_the_text_encoder(datamodule):
    model = model_of(
        vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, text_order_weight=1.0, **TINY_MODEL
    )
    images, tokens = _two_object_batch(datamodule, model)
    with pytest.raises(ValueError, match="paraphrase"):
        model.objective.discriminator_loss(images, tokens, penalty=False)
    paraphrase = datamodule.tokenizer.encode(["a large blue square right of a small red circle"] * 8)
    loss = model.objective.discriminator_loss(images, tokens, penalty=False, paraphrase=paraphrase)
    assert loss.logs["train/text_order"] > 0
    loss.loss.backward()
    assert model.text_encoder.token_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "setting, needs",
    [
        ({"caption_preference_weight": 1.0, "caption_weight": 0.0}, "caption_weight"),
        ({"twin_margin": -1.0}, "twin_margin"),
    ],
)
def test_binding_settings_that_cannot_work_are_refused(datamodule, setting, needs):
    with pytest.raises(ValueError, match=needs):
        model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, cycle_weight=0.0, **setting)


def test_twin_negatives_score_each_real_image_against_every_twin_of_its_caption(datamodule):
    """The discriminator's loss gains one fake term over (real image, twin) for every twin, at its
    own weight; the term reads the text encoder and the critic, not the generator."""
    model = model_of(
        vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, twin_negative_weight=1.0, **TINY_MODEL
    )
    images, tokens = _two_object_batch(datamodule, model)
    torch.manual_seed(0)
    loss = model.objective.discriminator_loss(images, tokens, penalty=False)
    assert 0.0 <= loss.logs["train/twin_acc"] <= 1.0
    # The same batch without the term, with the same draws: the loss differs only by the twin term.
    import dataclasses

    config = model.objective.config
    model.objective.config = dataclasses.replace(config, twin_negative_weight=0.0)
    torch.manual_seed(0)
    without = model.objective.discriminator_loss(images, tokens, penalty=False)
    assert "train/twin_acc" not in without.logs
    d, twins = model.discriminator, Twins.of(tokens, model.objective.word_pairs)
    with torch.no_grad():
        real = d.features(images)
        _, sentences = model.text_encoder(torch.cat([tokens, twins.tokens]))
        own = d.score(real, d.embed_text(sentences[: len(tokens)]))
        twin = d.score(tuple(r[twins.rows] for r in real), d.embed_text(sentences[len(tokens) :]))
    assert loss.logs["train/twin_acc"] == pytest.approx((own[twins.rows] > twin).float().mean().item())
    # Fake side: the weighted mean of the negatives (fake 1, mismatch 0.5, swap 0.5, twins 1).
    others = 2.0 * (without.logs["train/d_adv"] - torch.relu(1 - own).mean())
    expected = torch.relu(1 - own).mean() + (others + torch.relu(1 + twin).mean()) / 3.0
    assert loss.logs["train/d_adv"] == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="twin_negative_weight must not be negative"):
        model_of(twin_negative_weight=-1.0)


def test_twins_in_the_word_region_loss_are_candidates_for_critic_and_generator(datamodule):
    """With word_region_twins each image also ranks its caption's twins: the term grows on both sides
    (more candidates), and on the generator's side it still trains only the generator."""
    import dataclasses

    model = model_of(
        vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, word_region_weight=1.0, **TINY_MODEL
    )
    images, tokens = _two_object_batch(datamodule, model)
    values = {}
    for on in (False, True):
        model.objective.config = dataclasses.replace(model.objective.config, word_region_twins=on)
        torch.manual_seed(0)
        d_loss = model.objective.discriminator_loss(images, tokens, penalty=False)
        assert (d_loss.text.twin_words is not None) == on
        torch.manual_seed(1)
        values[on] = (d_loss.logs["train/d_word_region"], model.objective.generator_loss(images, d_loss.text).logs)
    assert values[True][0] > values[False][0]
    assert values[True][1]["train/g_word_region"] > values[False][1]["train/g_word_region"]
    logs, with_term, without = _gradients_with_and_without(model, images, tokens, word_region_twins=True)
    assert _changed(with_term, without, "generator.")  # the critic judges here; the G step does not move it
    for player in ("text_encoder.", "captioner.", "ema."):
        assert not _changed(with_term, without, player), player


def test_the_generators_word_region_weight_scales_its_term_only(datamodule):
    """word_region_weight_g sets the generator's weight of the word-region term: its loss moves by
    exactly the extra weight times the term, and the critic's loss on the same batch does not move."""
    import dataclasses

    model = model_of(
        vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, word_region_weight=1.0, **TINY_MODEL
    )
    images, tokens = _two_object_batch(datamodule, model)
    results = {}
    for weight_g in (None, 4.0, 0.0):
        model.objective.config = dataclasses.replace(model.objective.config, word_region_weight_g=weight_g)
        torch.manual_seed(0)
        d_loss = model.objective.discriminator_loss(images, tokens, penalty=False)
        torch.manual_seed(1)
        results[weight_g] = (d_loss.loss.item(), model.objective.generator_loss(images, d_loss.text).logs)
    same, four, off = results[None], results[4.0], results[0.0]
    assert same[0] == four[0] == off[0]  # the critic's term keeps word_region_weight
    term = same[1]["train/g_word_region"].item()
    assert four[1]["train/g_loss"].item() == pytest.approx(same[1]["train/g_loss"].item() + 3.0 * term, rel=1e-5)
    assert "train/g_word_region" not in off[1]
    assert off[1]["train/g_loss"].item() == pytest.approx(same[1]["train/g_loss"].item() - term, rel=1e-5)
    with pytest.raises(ValueError, match="word_region_weight_g must not be negative"):
        model_of(word_region_weight=1.0, word_region_weight_g=-1.0)
    assert any("word_region_weight_g has no effect" in line for line in
               model_of(word_region_weight_g=2.0).settings.ignored())  # fmt: skip


def test_a_region_teacher_reads_the_drawings_for_the_generator_and_follows_the_critic_slowly(datamodule):
    """With word_region_teacher_half_life the generator's word-region term is the teacher's (a copy
    of the critic), not the live critic's; the generator step trains only the generator; the
    teacher is in no optimizer and moves towards the critic only at the EMA update."""
    import dataclasses

    model = model_of(
        vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, word_region_weight=1.0,
        word_region_teacher_half_life=1000.0, **TINY_MODEL,
    )  # fmt: skip
    teacher, d = model.region_teacher, model.discriminator
    assert teacher is not None and not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for opt in model.configure_optimizers() for group in opt.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    with torch.no_grad():  # make the teacher differ from the critic
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images, tokens = _two_object_batch(datamodule, model)
    torch.manual_seed(0)
    text = model.objective.discriminator_loss(images, tokens, penalty=False).text
    values = {}
    for name, region_teacher in (("teacher", teacher), ("live", None)):
        model.objective.region_teacher = region_teacher
        torch.manual_seed(1)
        values[name] = model.objective.generator_loss(images, text).logs["train/g_word_region"].item()
    model.objective.region_teacher = teacher
    torch.manual_seed(1)
    fake = model.generator(model.objective.noise(len(tokens), images.device), text.sentence, text.words, text.padding)
    expected = model.objective.word_region_loss(text.words, text.padding, teacher.features_and_regions(fake)[1],
                                                critic=teacher)  # fmt: skip
    assert values["teacher"] == pytest.approx(expected.item(), rel=1e-5) and values["teacher"] != values["live"]
    config = model.objective.config
    model.objective.config = dataclasses.replace(config, contrastive_weight_g=0.0)  # the term and the adversarial loss
    logs, with_term, without = _gradients_with_and_without(model, images, tokens, word_region_weight=1.0)
    assert _changed(with_term, without, "generator.")
    for player in ("text_encoder.", "captioner.", "ema.", "discriminator.", "region_teacher."):
        assert not _changed(with_term, without, player), player
    model.objective.config = config
    before = [p.clone() for p in teacher.parameters()]
    model.g_steps += 10
    model.update_ema(batch_size=16)
    moved = [(b - p).abs().sum() for b, p in zip(before, teacher.parameters())]
    closer = sum((p - q).abs().sum() for p, q in zip(teacher.parameters(), d.parameters()))
    assert all(m > 0 for m in moved) and closer < sum((b - q).abs().sum() for b, q in zip(before, d.parameters()))
