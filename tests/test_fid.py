"""FID: equal to torch-fidelity's, batch-size independent, cached by weights content, off without weights."""

from __future__ import annotations

import os
import pickle
import urllib.error

import pytest
import pytorch_lightning as pl
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as inception_module

from callbacks import FID, AttributeAccuracy
from m2gan.atomic import atomic_path
from m2gan.cache import made_once
from m2gan.data import CaptionDataModule
from m2gan.eval import fid
from m2gan.eval.gather import gather_by_index
from m2gan.eval.shapes_judge import JudgeRecipe, save_judge, train_judge
from tests.helpers import TINY_MODEL, model_of


def _blobs(count: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Smooth random colour fields, uint8 (count, 3, 32, 32): not noise, so features vary meaningfully."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(count, 3, 4, 4, generator=g) + shift
    images = torch.nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.fixture(scope="session")
def inception_weights(m2gan_cache) -> str:
    """A torch-fidelity Inception weights file made here: random init, BatchNorm statistics recalibrated.

    Plain random weights give features near 1e-8 (every FID ≈ 0); running a few batches through
    the network in training mode gives its BatchNorm layers real statistics and the features spread.
    """

    class Untrained(inception_module.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return None

    def write(path) -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(inception_module, "load_state_dict_from_url", lambda *args, **kwargs: {})
            torch.manual_seed(0)
            model = Untrained(fid.INCEPTION, ["2048"])
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a plain average over the calibration batches
                module.train()
        with torch.no_grad():
            for seed in range(2):
                model(_blobs(16, seed=100 + seed))
        with atomic_path(path) as temporary:
            torch.save(model.state_dict(), temporary)

    return str(made_once(m2gan_cache / "test-inception.pth", write))  # once per test run, for both workers


def _features(path: str, images: torch.Tensor, batch_size: int, layers=("2048",)) -> dict[str, torch.Tensor]:
    extractor = fid.create_extractor(fid.INCEPTION, layers, path)
    batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    return fid.extract_features(extractor, batches)


def test_fid_equals_torch_fidelity_and_is_zero_against_itself(inception_weights):
    generated, real = _blobs(16, seed=1), _blobs(16, seed=2, shift=0.3)
    ours_generated = _features(inception_weights, generated, 8, layers=("2048", "logits_unbiased"))
    ours_real = _features(inception_weights, real, 8, layers=("2048", "logits_unbiased"))
    layers = fid.metric_layers(fid.INCEPTION, ["fid", "kid", "isc", "prc"])
    ours = fid.compute_metrics(ours_generated, ours_real, layers, kid_subset_size=8)
    theirs = torch_fidelity.calculate_metrics(
        input1=fid.ImageTensors(generated), input2=fid.ImageTensors(real), cuda=False, batch_size=8, fid=True, kid=True, isc=True,
        prc=True, kid_subset_size=8, feature_extractor=fid.INCEPTION, feature_extractor_weights_path=inception_weights, cache=False,
        save_cpu_ram=True, verbose=False,
    )  # fmt: skip
    assert ours["fid"] > 1.0, "the test weights give degenerate features"
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-5)
    assert ours["isc"] == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    assert (ours["precision"], ours["recall"]) == pytest.approx((theirs["precision"], theirs["recall"]), rel=1e-5)
    itself = fid.compute_metrics(ours_generated, ours_generated, {"fid": "2048"})["fid"]
    assert abs(itself) < 1e-4 * ours["fid"]


def test_fid_does_not_depend_on_the_batch_size(inception_weights):
    generated, real = _blobs(7, seed=3), _blobs(6, seed=4, shift=0.2)
    real_features = _features(inception_weights, real, 6)
    one = fid.compute_metrics(_features(inception_weights, generated, 1), real_features, {"fid": "2048"})
    # Batches of 3, 3 and 1: a short last batch must not change the features either.
    many = fid.compute_metrics(_features(inception_weights, generated, 3), real_features, {"fid": "2048"})
    assert one["fid"] == pytest.approx(many["fid"], rel=1e-5)


def test_metric_names_state_the_protocol():
    assert fid.metric_names(fid.INCEPTION, 2000)["fid"] == "val/fid_2k"
    assert fid.metric_names(fid.SHAPES_JUDGE, 2000)["fid"] == "val/fid_shapes_2k"
    assert fid.metric_names(fid.INCEPTION, 500)["isc"] == "val/is_500"
    with pytest.raises(ValueError, match="Inception Score needs Inception"):
        fid.metric_layers(fid.SHAPES_JUDGE, ["isc"])
    with pytest.raises(ValueError, match="unknown metrics"):
        fid.metric_layers(fid.INCEPTION, ["fd"])


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_weights_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as file:
        pickle.dump({"weights": _Payload(str(marker))}, file)
    with pytest.raises(ValueError, match="not a plain state dict"):
        fid.create_extractor(fid.INCEPTION, ["2048"], str(path))
    assert not marker.exists()


def test_gather_by_index_orders_rows_and_counts_each_index_once():
    rows = gather_by_index([2, 0, 2], {"x": torch.tensor([[2.0], [0.0], [2.0]]), "caption": ["c", "a", "c"]})
    assert rows["x"].flatten().tolist() == [0.0, 2.0] and rows["caption"] == ["a", "c"]


# -- the callbacks -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def judge_weights(tmp_path_factory) -> str:
    """A quickly trained shapes judge (not the benchmark's; good enough to give features and labels)."""
    path = tmp_path_factory.mktemp("judge") / "judge.safetensors"
    save_judge(train_judge(JudgeRecipe(pool_size=600, steps=80, batch_size=64)), path, resolution=32)
    return str(path)


def _validate(model, datamodule, callbacks, tmp_path):
    trainer = pl.Trainer(
        default_root_dir=tmp_path, limit_val_batches=1, logger=False, callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    return trainer.validate(model, datamodule, verbose=False)[0]


def test_fid_callback_caches_real_features_by_weights_content(
    tmp_path, datamodule, tiny_model, judge_weights, monkeypatch
):
    calls = []
    extract = fid.extract_features
    monkeypatch.setattr(fid, "extract_features", lambda *args, **kwargs: calls.append(1) or extract(*args, **kwargs))

    def evaluate(weights):
        callback = FID(
            num_samples=24, feature_extractor=fid.SHAPES_JUDGE, feature_extractor_weights_path=weights,
            metrics=["fid", "kid", "prc"], kid_subset_size=8, batch_size=10, cache_dir=str(tmp_path / "cache"),
        )  # fmt: skip
        calls.clear()
        metrics = _validate(tiny_model, datamodule, [callback], tmp_path)
        return metrics, len(calls)

    first, first_calls = evaluate(judge_weights)
    second, second_calls = evaluate(judge_weights)
    assert (first_calls, second_calls) == (2, 1)  # real + generated, then generated only
    assert first["val/fid_shapes_24"] == pytest.approx(second["val/fid_shapes_24"], rel=1e-6)
    assert first["val/fid_shapes_24"] > 0 and {"val/kid_shapes_24", "val/precision_shapes_24"} <= set(first)

    other = tmp_path / "other-judge.safetensors"
    save_judge(train_judge(JudgeRecipe(pool_size=200, steps=5, seed=7)), other, resolution=32)
    _, calls_with_other = evaluate(str(other))
    assert calls_with_other == 2  # new weights content: new real features


def test_fid_callback_switches_itself_off_without_weights_or_network(tmp_path, datamodule, tiny_model, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no Inception file in hub's cache
    offline = FID(num_samples=8, cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="feature_extractor_weights_path"):
        metrics = _validate(tiny_model, datamodule, [offline], tmp_path)
    assert not offline.enabled and not any("fid" in name for name in metrics)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(inception_module, "load_state_dict_from_url", no_network)
    downloading = FID(num_samples=8, download=True, cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="feature_extractor_weights_path"):
        _validate(tiny_model, datamodule, [downloading], tmp_path)
    assert not downloading.enabled


def test_fid_callback_with_inception_weights_from_a_local_file(tmp_path, inception_weights):
    # 4 drawn and 4 real images: each costs Inception's 299-pixel forward pass on a CPU.
    datamodule = CaptionDataModule(batch_size=4, train_size=16, val_size=4, test_size=4, tokenizer_fit_size=300)
    model = model_of(vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, **TINY_MODEL)
    model.set_tokenizer(datamodule.tokenizer)
    callback = FID(num_samples=4, feature_extractor_weights_path=inception_weights, cache_dir=str(tmp_path))
    metrics = _validate(model, datamodule, [callback], tmp_path)
    assert metrics["val/fid_4"] > 0


def test_fid_can_be_monitored_by_model_checkpoint(tmp_path, datamodule, tiny_model, judge_weights):
    callback = FID(num_samples=16, feature_extractor=fid.SHAPES_JUDGE, feature_extractor_weights_path=judge_weights,
                   cache_dir=str(tmp_path / "cache"))  # fmt: skip
    checkpoint = pl.callbacks.ModelCheckpoint(tmp_path / "ckpt", monitor="val/fid_shapes_16", mode="min",
                                              filename="{step}-{val/fid_shapes_16:.2f}", auto_insert_metric_name=False)  # fmt: skip
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        callbacks=[callback, checkpoint], enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(tiny_model, datamodule)
    assert checkpoint.best_model_score is not None and os.path.isfile(checkpoint.best_model_path)


def test_attribute_accuracy_reads_back_real_images(tmp_path, datamodule, judge_weights):
    """A stand-in 'generator' that returns the real image of each caption scores as the judge does on real data."""
    datamodule.setup("validate")
    dataset = datamodule.val_dataloader().dataset
    by_caption = {dataset.caption(i): dataset.image(i) for i in range(len(dataset))}

    class Copier(pl.LightningModule):
        def __init__(self, shuffle: bool) -> None:
            super().__init__()
            self.shuffle = shuffle
            self.layer = torch.nn.Linear(1, 1)
            self.hparams.resolution = 32

        def validation_step(self, batch, batch_idx):
            return None

        @property
        def ema(self):  # callbacks sample through the model's pipeline: here, the stand-in itself
            return self

        def generate(self, prompts, num_images=1, seed=0):
            images = torch.stack([by_caption[p] for p in prompts])
            if self.shuffle:
                images = images.roll(1, dims=0)
            return ((images + 1) * 127.5).round().to(torch.uint8)

    scores = {}
    for shuffle in (False, True):
        callback = AttributeAccuracy(judge_weights_path=judge_weights)
        scores[shuffle] = _validate(Copier(shuffle), datamodule, [callback], tmp_path)
    assert set(scores[False]) == {f"val/attr_acc/{n}" for n in ("shape", "colour", "size", "position")}
    assert scores[False]["val/attr_acc/colour"] >= 0.9 and scores[False]["val/attr_acc/position"] >= 0.9
    assert scores[True]["val/attr_acc/position"] < 0.5  # images that do not match their captions score low


def test_evaluation_callbacks_skip_the_judge_when_validation_is_off(tmp_path, tiny_model):
    # limit_val_batches=0: the shapes judge would be trained (about a minute) and never used.
    cache = tmp_path / "cache"
    callbacks = [FID(feature_extractor="shapes-judge", cache_dir=str(cache)), AttributeAccuracy(cache_dir=str(cache))]
    trainer = pl.Trainer(default_root_dir=tmp_path, limit_val_batches=0, logger=False, callbacks=callbacks)
    for callback in callbacks:
        callback.setup(trainer, tiny_model, "fit")
    assert callbacks[0].extractor is None and callbacks[1].judge is None
    assert not cache.exists() or not any(cache.iterdir())


def _gather_in_process(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    # Rank r holds samples r, r + 2, …; the last one is repeated on both ranks, as a padding sampler does.
    indices = [*range(rank, 5, world_size), 4]
    rows = gather_by_index(
        indices, {"x": torch.tensor([[float(i)] for i in indices]), "name": [f"s{i}" for i in indices]}
    )
    torch.save({"x": rows["x"], "name": rows["name"]}, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_gather_by_index_across_two_processes(tmp_path):
    torch.multiprocessing.spawn(
        _gather_in_process, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    for rank in (0, 1):
        rows = torch.load(tmp_path / f"rank{rank}.pt")
        assert rows["x"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and rows["name"] == [f"s{i}" for i in range(5)]
