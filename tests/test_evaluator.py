"""The dual-encoder evaluator: R-precision at chance for mismatched pairs and at its ceiling for real
ones, diversity zero for a generator that ignores its noise, cached by the data it learned from,
and the callback that logs them."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from callbacks import TextImageConsistency
from m2gan.data import CaptionDataModule
from m2gan.data.shapes import ShapesDataset
from m2gan.eval import evaluator as ev
from m2gan.images import to_uint8
from m2gan.networks import DualEncoder
from m2gan.tokenizer import CaptionTokenizer

RECIPE = ev.EvaluatorRecipe(pool_size=1500, steps=300)


@pytest.fixture(scope="module")
def trained(m2gan_cache):
    """An evaluator trained on 1,500 shapes pairs (seconds; once per test run), with 500 validation pairs to score."""
    train = ShapesDataset("train", 1500, 32, seed=0)
    val = ShapesDataset("val", 500, 32, seed=0)
    tokenizer = CaptionTokenizer.fit([train.caption(i) for i in range(1500)])
    model, _, _ = ev.load_evaluator(ev.evaluator_file(train, tokenizer, 32, RECIPE, m2gan_cache))
    real = torch.stack([val.image(i) for i in range(len(val))])
    texts = [val.caption(i) for i in range(len(val))]
    return model, tokenizer, real, texts


def test_r_precision_is_chance_for_shuffled_pairs_and_high_for_real_ones(trained):
    model, tokenizer, real, texts = trained
    sets = ev.candidate_sets(texts, 100, seed=0)
    assert (sets[:, 0] == torch.arange(len(texts))).all()
    assert all(texts[j] != texts[i] for i, row in enumerate(sets.tolist()) for j in row[1:])  # other texts only
    images, captions = ev.embed_images(model, real), ev.embed_captions(model, tokenizer, texts)
    ceiling = ev.r_precision(images, captions, sets)
    shuffled = ev.r_precision(
        images[torch.randperm(len(texts), generator=torch.Generator().manual_seed(1))], captions, sets
    )
    assert ceiling > 0.5, ceiling  # chance is 0.01
    assert shuffled < 0.035, shuffled  # 0.01 plus three standard deviations of 500 draws


def test_diversity_is_zero_when_the_noise_is_ignored(trained):
    model, _, real, _ = trained
    same = ev.embed_images(model, real[:10].repeat_interleave(8, dim=0)).view(10, 8, -1)
    assert ev.diversity(same) == pytest.approx(0.0, abs=1e-5)
    assert ev.diversity(ev.embed_images(model, real[:80]).view(10, 8, -1)) > 0.3


def test_the_evaluator_is_cached_by_its_data_and_reused(tmp_path, monkeypatch):
    data = ShapesDataset("train", 200, 32, seed=0)
    tokenizer = CaptionTokenizer.fit([data.caption(i) for i in range(200)])
    small = ev.EvaluatorRecipe(pool_size=64, steps=2)
    path = ev.evaluator_file(data, tokenizer, 32, small, tmp_path)
    monkeypatch.setattr(ev, "train_evaluator", lambda *args: pytest.fail("retrained a cached evaluator"))
    assert ev.evaluator_file(data, tokenizer, 32, small, tmp_path) == path
    model, read_tokenizer, resolution = ev.load_evaluator(path)
    assert resolution == 32 and model.image_encoder[0].out_channels == small.channels[0]
    assert model.text_encoder.architecture == small.text_architecture == "gru"
    assert read_tokenizer == tokenizer
    key = ev.evaluator_key
    other_data = ShapesDataset("train", 200, 32, seed=1)
    held_out = ShapesDataset("train", 200, 32, seed=0, held_out=["red circle"])
    other_words = CaptionTokenizer.fit([data.caption(i) for i in range(50)])
    keys = {
        key(data.fingerprint, tokenizer, 32, small),
        key(other_data.fingerprint, tokenizer, 32, small),
        key(held_out.fingerprint, tokenizer, 32, small),
        key(data.fingerprint, other_words, 32, small),
        key(data.fingerprint, tokenizer, 64, small),
        key(data.fingerprint, tokenizer, 32, RECIPE),
        key(data.fingerprint, tokenizer, 32, dataclasses.replace(small, text_architecture="transformer")),
    }
    assert len(keys) == 7


def test_an_evaluator_file_written_before_the_gru_loads_as_a_transformer(tmp_path):
    tokenizer = CaptionTokenizer.fit(["a red circle", "a blue square"])
    torch.manual_seed(0)
    model = DualEncoder(tokenizer.vocab_size, tokenizer.max_length, channels=(4, 4, 4), text_architecture="transformer")
    path = tmp_path / "old.safetensors"
    ev.save_evaluator(model.eval(), tokenizer, path, 32)
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    sizes = json.loads(metadata["sizes"])
    del sizes["text_architecture"]  # as files written before the key existed
    save_file(load_file(str(path)), str(path), {**metadata, "sizes": json.dumps(sizes)})
    loaded, _, _ = ev.load_evaluator(path)
    tokens = tokenizer.encode(["a red circle", "a blue square"])
    assert loaded.text_encoder.architecture == "transformer"
    torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens))


def test_a_corrupt_evaluator_file_is_one_clear_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.safetensors: not a readable M2GAN evaluator"):
        ev.load_evaluator(tmp_path / "bad.safetensors")


class _Pipeline:
    """Stands in for the EMA pipeline: draws a caption's real images (or one image for every caption).

    ``lookup`` maps a caption to the real images that carry it, in dataset order. The k-th time a
    caption is asked for, the k-th of them is drawn (cycling), so a pass over the validation
    captions in order draws exactly the real validation images, also where captions repeat.
    """

    def __init__(self, lookup: dict[str, list[torch.Tensor]], ignore_prompt: bool = False):
        self.lookup, self.ignore_prompt = lookup, ignore_prompt
        self.first = next(iter(lookup.values()))[0]
        self.asked: Counter[str] = Counter()

    def generate(self, prompts, num_images=1, seed=0, batch_size=None):
        images = []
        for prompt in prompts:
            if self.ignore_prompt:
                image = self.first
            else:
                options = self.lookup[prompt]
                image = options[self.asked[prompt] % len(options)]
                self.asked[prompt] += 1
            images += [image] * num_images  # the noise is ignored
        return to_uint8(torch.stack(images))


def test_the_callback_logs_chance_for_a_prompt_blind_generator_and_the_ceiling_for_a_perfect_one(
    trained, tmp_path, monkeypatch
):
    model, tokenizer, _, _ = trained
    datamodule = CaptionDataModule(batch_size=8, train_size=64, val_size=400, tokenizer_fit_size=300)
    datamodule.setup("fit")
    val = datamodule.datasets["val"]
    lookup = {}
    for i in range(len(val)):
        lookup.setdefault(val.caption(i), []).append(val[i]["image"])
    path = tmp_path / "evaluator.safetensors"
    ev.save_evaluator(model, tokenizer, path, 32)  # with its own tokenizer, not the run's
    trainer = SimpleNamespace(
        sanity_checking=False, is_global_zero=True, datamodule=datamodule, val_dataloaders=datamodule.val_dataloader(),
        strategy=SimpleNamespace(broadcast=lambda values, src: values, barrier=lambda name: None), limit_val_batches=1,
    )  # fmt: skip
    results = {}
    pipelines = {"perfect": _Pipeline(lookup), "blind": _Pipeline(lookup, ignore_prompt=True), "no renditions": None}
    for name, pipeline in pipelines.items():
        if pipeline is None:  # data that cannot draw a caption again: its nearest captions' images
            monkeypatch.delattr(ShapesDataset, "renditions")
            pipeline = pipelines["perfect"]
        logged = {}
        module = SimpleNamespace(
            ema=pipeline, tokenizer=datamodule.tokenizer, device=torch.device("cpu"),
            hparams=SimpleNamespace(resolution=32), log=lambda key, value, logged=logged, **kwargs: logged.__setitem__(key, value),
        )  # fmt: skip
        callback = TextImageConsistency(num_samples=400, diversity_prompts=10, evaluator_weights_path=str(path))
        callback.setup(trainer, module, "fit")
        callback.on_validation_epoch_end(trainer, module)
        results[name] = logged
    perfect, blind = results["perfect"], results["blind"]
    # It draws the very pixels of the real images, embedded in the same batches on this machine: equal, not close.
    assert perfect["val/r_precision"] == perfect["val/r_precision_real"]
    assert perfect["val/r_precision_real"] > 0.3
    assert blind["val/r_precision"] < 0.04  # one image for every caption: chance, 1 in 100
    assert perfect["val/diversity"] == pytest.approx(0.0, abs=1e-5)  # the stand-ins ignore their noise
    assert perfect["val/diversity_ratio"] == pytest.approx(0.0, abs=1e-4)
    # One caption's real images spread, less than images of different captions do.
    same, across = perfect["val/diversity_same_caption_real"], perfect["val/diversity_across_captions_real"]
    assert 0.02 < same < across
    nearest = results["no renditions"]["val/diversity_same_caption_real"]
    assert 0.02 < nearest < across and nearest != same  # the images of the nearest captions instead
    # Binding: the candidates begin with twins; a perfect generator reaches the ceiling, a blind one chance.
    assert perfect["val/r_precision_binding"] == perfect["val/r_precision_binding_real"]
    assert blind["val/r_precision_binding"] < 0.06  # chance 1 in 100 over about 70 captions with twins


def test_inside_a_fit_the_evaluator_is_trained_once_and_the_metrics_are_logged(tmp_path, tiny_model, monkeypatch):
    import pytorch_lightning as pl

    datamodule = CaptionDataModule(batch_size=8, train_size=64, val_size=128, tokenizer_fit_size=300)
    tiny_model.set_tokenizer(datamodule.tokenizer)

    def run(stage: str) -> dict:
        callback = TextImageConsistency(num_samples=128, diversity_prompts=4, diversity_images=2, pool_size=64, steps=3)
        trainer = pl.Trainer(
            default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
            callbacks=[callback], enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        )  # fmt: skip
        (trainer.fit if stage == "fit" else trainer.validate)(tiny_model, datamodule)
        return dict(trainer.callback_metrics)

    logged = set(run("fit"))
    assert {"val/r_precision", "val/r_precision_real", "val/diversity", "val/diversity_same_caption_real"} <= logged
    assert {"val/diversity_ratio", "val/diversity_across_captions_real"} <= logged
    assert {"val/r_precision_binding", "val/r_precision_binding_real"} <= logged
    monkeypatch.setattr(ev, "train_evaluator", lambda *args: pytest.fail("retrained a cached evaluator"))
    assert "val/r_precision" in run("validate")  # the same data: the cached evaluator is read


def test_diversity_is_zero_for_identical_images_and_grows_with_their_spread():
    base = torch.nn.functional.normalize(torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    noise = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(1))
    spreads = [ev.diversity(torch.nn.functional.normalize(base + scale * noise, dim=-1)) for scale in (0, 0.1, 0.5, 2)]
    assert spreads[0] == pytest.approx(0.0, abs=1e-6)
    assert spreads == sorted(spreads) and spreads[-1] > 0.5


def test_nearest_captions_group_identical_captions_first():
    texts = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    texts[4] = texts[1]  # the same caption twice
    groups = ev.nearest_captions(texts, count=3, k=2)
    assert groups[:, 0].tolist() == [0, 1, 2]  # each caption leads its own group
    assert groups[1, 1].item() == 4  # then the identical one


def test_binding_candidates_begin_with_the_captions_twins():
    captions = ["a red circle left of a blue square", "a blue circle left of a red square", "a red circle",
                *(f"caption {i}" for i in range(10))]  # fmt: skip
    twins = [["a blue circle left of a red square", "a red square left of a blue circle"], ["x y"], [], *[[]] * 10]
    texts, rows, sets = ev.binding_candidate_sets(captions, twins, candidates=5, seed=0)
    assert texts[: len(captions)] == captions and texts[len(captions) :] == [*twins[0], *twins[1]]
    assert rows.tolist() == [0, 1]  # captions without twins are left out
    assert sets[0, :3].tolist() == [0, 13, 14] and sets[1, :2].tolist() == [1, 15]
    for row, i in zip(sets.tolist(), rows.tolist()):  # then others, never a text equal to the caption or a twin
        assert all(texts[j] not in {captions[i], *twins[i]} for j in row[1 + len(twins[i]) :])
    assert len(set(sets[0].tolist())) == 5


def test_the_evaluator_learns_against_binding_twins(monkeypatch):
    from m2gan.networks import DualEncoder

    data = ShapesDataset("train", 200, 32, seed=0, two_object_prob=1.0)
    captions = [data.caption(i) for i in range(200)]
    tokenizer = CaptionTokenizer.fit(captions)
    calls = []
    real_loss = DualEncoder.loss

    def recording_loss(self, images, tokens, same, **hard):
        calls.append((tokens, hard))
        return real_loss(self, images, tokens, same, **hard)

    monkeypatch.setattr(DualEncoder, "loss", recording_loss)
    images = torch.zeros(200, 3, 32, 32, dtype=torch.uint8)
    ev.train_evaluator(images, captions, tokenizer, ev.EvaluatorRecipe(pool_size=200, steps=1, batch_size=64))
    tokens, hard = calls[0]
    assert hard["has_hard"].float().mean() > 0.5  # most two-object captions have a twin
    for own, twin in zip(tokens[hard["has_hard"]], hard["hard_tokens"][hard["has_hard"]]):
        assert sorted(own.tolist()) == sorted(twin.tolist()) and not torch.equal(own, twin)  # same words, rebound
    calls.clear()
    ev.train_evaluator(images, captions, tokenizer, ev.EvaluatorRecipe(pool_size=200, steps=1, binding_twins=False))
    assert calls[0][1] == {}


def test_a_hard_negative_counts_only_where_an_image_has_one():
    from m2gan.networks import DualEncoder

    torch.manual_seed(0)
    model = DualEncoder(20, 6, dim=8)
    images, tokens = torch.randn(4, 3, 32, 32), torch.randint(4, 20, (4, 6))
    plain = model.loss(images, tokens)
    none = torch.zeros(4, dtype=torch.bool)
    assert torch.equal(model.loss(images, tokens, hard_tokens=tokens.flip(0), has_hard=none), plain)
    # its own caption as the hard negative: as close as the positive, so the loss must rise
    assert model.loss(images, tokens, hard_tokens=tokens, has_hard=~none) > plain


def test_processes_that_ask_for_one_cache_file_at_once_make_it_once(tmp_path):
    """Parallel runs, DDP ranks and test workers share cache files: the first makes it, the others wait."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from m2gan.cache import made_once\n"
        "def make(path):\n"
        "    with open(sys.argv[2], 'a') as log: log.write('made\\n')\n"
        "    time.sleep(1.0)\n"
        "    path.write_text('judge')\n"
        "print(made_once(Path(sys.argv[1]), make).read_text())\n"
    )
    target, log = tmp_path / "judges" / "judge.safetensors", tmp_path / "makers.log"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(target), str(log)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert outputs == ["judge"] * 3
    assert log.read_text() == "made\n"  # one maker; without the lock each process would have made it


def test_the_binding_reader_learns_from_real_pairs_only_and_is_cached(tmp_path, monkeypatch):
    from m2gan.eval import binding_reader as br

    data = ShapesDataset("train", 200, 32, seed=0, two_object_prob=0.5)
    tokenizer = CaptionTokenizer.fit([data.caption(i) for i in range(200)])
    small = br.ReaderRecipe(pool_size=48, steps=3, width=16, layers=1, channels=4)
    seen = {}
    train_reader = br.train_reader

    def spy(images, captions, *args):
        seen.update(images=images, captions=captions)
        return train_reader(images, captions, *args)

    monkeypatch.setattr(br, "train_reader", spy)
    path = br.reader_file(data, tokenizer, 32, small, tmp_path)
    # What it learned from: the training split's own images and captions, nothing drawn.
    assert torch.equal(seen["images"], torch.stack([to_uint8(data.image(i)) for i in range(48)]))
    assert seen["captions"] == [data.caption(i) for i in range(48)]
    monkeypatch.setattr(br, "train_reader", lambda *args: pytest.fail("retrained a cached reader"))
    assert br.reader_file(data, tokenizer, 32, small, tmp_path) == path
    reader, read_tokenizer = br.load_reader(path)
    assert read_tokenizer == tokenizer and not any(p.requires_grad for p in reader.parameters())
    # It scores binding per twin kind, on uint8 images as drawn.
    pairs = [i for i in range(200) if len(data.scene(i).objects) == 2][:20]
    scores = br.twin_preference(reader, tokenizer, torch.stack([to_uint8(data.image(i)) for i in pairs]),
                                [data.caption(i) for i in pairs])  # fmt: skip
    assert set(scores) == {"attribute", "noun", "relation"}
    assert all(0.0 <= value <= 1.0 and count > 0 for value, count in scores.values())
    path.write_bytes(b"not a reader")
    with pytest.raises(ValueError, match="not a readable M2GAN binding reader"):
        br.load_reader(path)
