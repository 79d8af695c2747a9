"""FID (and optionally KID, IS, precision/recall) of the EMA generator against real validation images."""

from __future__ import annotations

import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from callbacks.schedule import ValidationSchedule, validation_dataset, will_validate
from m2gan.cache import cache_root
from m2gan.eval import fid
from m2gan.eval.gather import gather_by_index
from m2gan.eval.shapes_judge import JudgeRecipe, judge_file
from m2gan.images import to_uint8


class FID(pl.Callback):
    """Fréchet distance between EMA-generator samples and real validation images, via torch-fidelity.

    At every ``every_n_validations``-th validation the first ``num_real`` validation images are the
    real set (their features are computed once and cached on disk) and ``num_samples`` images are
    generated for *their* captions (caption ``i % num_real``), so both sets share a text
    distribution. Noise is fixed: the same images are drawn for the same weights at every
    evaluation and for any number of processes. Under DDP each rank generates and embeds its share;
    features are gathered, rank 0 computes the metrics and broadcasts them, every rank logs them
    (so ``ModelCheckpoint(monitor="val/fid_2k", mode="min")`` works everywhere).

    Logged names state the protocol (:func:`m2gan.eval.fid.metric_names`): ``val/fid_2k`` is Inception
    FID of 2,000 generated images; ``val/fid_shapes_2k`` is FID in the shapes judge's feature space.

    Without weights and without permission to download them, the callback warns once, naming the
    option to set, and turns itself off; training goes on.

    Args:
        metrics: Any of ``fid``, ``kid``, ``isc`` (Inception Score), ``prc`` (precision/recall).
            All are computed in the one extractor's feature space (torch-fidelity computes
            precision/recall on VGG16 features by default; here they use the chosen extractor).
        num_samples: Generated images per evaluation.
        num_real: Real validation images (the first ones of the split); None = ``num_samples``,
            capped at the split's size.
        feature_extractor: A torch-fidelity extractor name: ``inception-v3-compat`` (standard FID)
            or ``shapes-judge`` (the built-in data's attribute classifier; trained once and cached
            when no weights file is given).
        feature_extractor_weights_path: Local weights file of the extractor (Inception: the
            torch-fidelity ``.pth``; shapes judge: a ``.safetensors`` from ``save_judge``).
        download: Allow torch-fidelity to download the Inception weights when no local file exists.
        every_n_validations: Evaluate at every n-th validation run.
        batch_size: Images per generator and feature-extractor pass.
        seed: Noise seed of the generated images.
        truncation: Noise truncation of the generated images (None = plain normal noise).
        kid_subset_size: KID subset size (capped at the smaller set).
        cache_dir: Where real features are cached; None = ``$M2GAN_CACHE`` or ``~/.cache/m2gan``.
    """

    def __init__(
        self,
        metrics: list[str] | None = None,
        num_samples: int = 2000,
        num_real: int | None = None,
        feature_extractor: str = fid.INCEPTION,
        feature_extractor_weights_path: str | None = None,
        download: bool = False,
        every_n_validations: int = 1,
        batch_size: int = 64,
        seed: int = 0,
        truncation: float | None = None,
        kid_subset_size: int = 1000,
        cache_dir: str | None = None,
    ) -> None:
        if num_samples < 2 or (num_real is not None and num_real < 2):
            raise ValueError("FID needs at least 2 generated and 2 real images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.layers = fid.metric_layers(feature_extractor, metrics or ["fid"])
        self.num_samples, self.num_real = num_samples, num_real
        self.extractor_name, self.weights_path = feature_extractor, feature_extractor_weights_path
        self.download = download
        self.schedule, self.batch_size = ValidationSchedule(every_n_validations), batch_size
        self.seed, self.truncation = seed, truncation
        self.kid_subset_size = kid_subset_size
        self.cache_dir = cache_dir or str(cache_root())
        self.names = fid.metric_names(feature_extractor, num_samples)
        self.extractor: torch.nn.Module | None = None
        self.enabled = True
        self._real: dict[str, torch.Tensor] | None = None
        self._real_statistics: dict | None = None
        self._captions: list[str] = []

    # -- setup -----------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled or self.extractor is not None or not will_validate(trainer, stage):
            return
        try:
            path = self._weights(trainer, pl_module)
        except fid.WeightsUnavailable as error:
            rank_zero_warn(f"FID callback disabled: {error}")
            self.enabled = False
            return
        try:
            self.extractor = fid.create_extractor(self.extractor_name, set(self.layers.values()), path)
        except OSError as error:  # a download that cannot reach the network
            rank_zero_warn(
                f"FID callback disabled: could not obtain {self.extractor_name} weights ({error}); "
                "set feature_extractor_weights_path to a local file"
            )
            self.enabled = False
            return
        self.weights_file, self.weights_identity = path, fid.weights_identity(self.extractor_name, path)

    def _weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        if self.extractor_name == fid.SHAPES_JUDGE and self.weights_path is None:
            return str(shared_judge_file(trainer, pl_module.hparams.resolution, self.cache_dir))
        return fid.resolve_weights(self.extractor_name, self.weights_path, self.download)

    # -- evaluation ------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or not self.schedule.due(trainer):
            return
        for name, value in self.evaluate(trainer, pl_module).items():
            pl_module.log(name, value, sync_dist=False)

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Compute the metrics now; returns ``{logged name: value}`` on every rank."""
        dataset = validation_dataset(trainer)
        device = pl_module.device
        self.extractor.to(device)
        real = self._real_features(dataset, trainer, device)
        generated = self._generated_features(pl_module, trainer.global_rank, trainer.world_size, device)
        values = None
        if trainer.is_global_zero:
            if "fid" in self.layers and self._real_statistics is None:
                self._real_statistics = fid.fid_statistics(real[self.layers["fid"]])
            values = fid.compute_metrics(
                generated, real, self.layers, self.kid_subset_size, real_statistics=self._real_statistics
            )
        values = trainer.strategy.broadcast(values, src=0)
        return {self.names[key]: value for key, value in values.items()}

    def _real_features(self, dataset, trainer, device: torch.device) -> dict[str, torch.Tensor]:
        if self._real is not None:
            return self._real
        count = min(self.num_real or self.num_samples, len(dataset))
        layers = sorted(set(self.layers.values()))
        fingerprint = getattr(dataset, "fingerprint", None)
        fields = {"dataset": fingerprint, "count": count, "extractor": self.weights_identity, "layers": layers}
        path = fid.real_cache_file(self.cache_dir, fields) if fingerprint else None
        if path is None:
            rank_zero_warn(f"{type(dataset).__name__} has no 'fingerprint': FID's real features are not cached")
        # Every rank reads the cache itself: no shared folder is assumed, and all need the captions.
        cached = fid.load_real(path, layers) if path else None
        # All ranks use it or none does: one that missed (another process was still writing the file)
        # would gather the features below alone, and its collective would meet another one's.
        if trainer.strategy.reduce_boolean_decision(cached is not None, all=True):
            self._real, self._captions = cached
            return self._real

        rank, world_size = trainer.global_rank, trainer.world_size
        loaded = [(i, dataset[i]) for i in range(rank, count, world_size)]
        indices = [i for i, item in loaded if item is not None]  # an image that fails to load is left out
        items = [item for _, item in loaded if item is not None]
        batches = (
            to_uint8(torch.stack([item["image"] for item in items[start : start + self.batch_size]]))
            for start in range(0, len(items), self.batch_size)
        )
        features = fid.extract_features(self.extractor, batches, device)
        rows = gather_by_index(indices, {**features, "caption": [item["caption"] for item in items]})
        self._captions = rows.pop("caption")
        self._real = rows
        if path is not None and rank == 0:
            try:
                fid.save_real(path, self._real, self._captions, fields)
            except OSError as error:
                warnings.warn(f"could not cache FID real features in {path}: {error}", stacklevel=1)
        return self._real

    def _generated_features(
        self, pl_module: pl.LightningModule, rank: int, world_size: int, device: torch.device
    ) -> dict[str, torch.Tensor]:
        # Blocks of batch_size images, block b seeded with seed + b and drawn by rank b % world_size:
        # the images depend on neither the number of processes nor the rank that drew them.
        blocks = [
            range(start, min(start + self.batch_size, self.num_samples))
            for start in range(0, self.num_samples, self.batch_size)
        ]
        mine = [(b, block) for b, block in enumerate(blocks) if b % world_size == rank]
        batches = (
            pl_module.ema.generate(
                [self._captions[i % len(self._captions)] for i in block], seed=self.seed + b, truncation=self.truncation
            )
            for b, block in mine
        )
        features = fid.extract_features(self.extractor, batches, device)
        return gather_by_index([i for _, block in mine for i in block], features)


def shared_judge_file(trainer: pl.Trainer, resolution: int, cache_dir: str) -> str:
    """The cached shapes judge for ``resolution``: rank 0 trains it if missing (about a minute), the others wait."""
    recipe = JudgeRecipe(resolution=resolution)
    if trainer.is_global_zero:
        judge_file(recipe, cache_dir)
    trainer.strategy.barrier("shapes-judge")
    return str(judge_file(recipe, cache_dir))
