"""FID and its companions (KID, Inception Score, precision/recall) on torch-fidelity's features.

torch-fidelity supplies the feature extractors and the metric formulas, so a number computed here
equals ``torch_fidelity.calculate_metrics`` on the same images and weights. This module adds what a
training loop needs around them:

* features of in-memory uint8 batches (no PNG round trip, no data loader of torch-fidelity's);
* real-image features cached on disk under a key that holds the dataset, the number of images,
  the extractor and the *content digest* of its weights (torch-fidelity's own cache key ignores
  the weights file, so statistics made with one set of weights would be reused with another);
* weights resolved offline: an explicit file, else torch hub's cache, else (only if allowed) a
  download; a weights file is read as tensors before torch-fidelity unpickles it;
* the shapes judge (:mod:`m2gan.eval.shapes_judge`) registered as a feature extractor, so the built-in
  data has a meaningful FID offline. Its numbers are named apart from Inception FID.

Plain torch and torch-fidelity: no Lightning here.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor

from m2gan.atomic import atomic_path
from m2gan.cache import file_digest, key_digest
from m2gan.eval.shapes_judge import load_judge

INCEPTION = "inception-v3-compat"
SHAPES_JUDGE = "shapes-judge"
METRICS = ("fid", "kid", "isc", "prc")


class ImageTensors(Dataset):
    """uint8 images (N, 3, H, W) as the ``Dataset`` torch-fidelity's ``calculate_metrics`` reads."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


class WeightsUnavailable(RuntimeError):
    """The feature extractor's weights are neither on disk nor allowed to be downloaded."""


class ShapesJudgeFeatures(FeatureExtractorBase):
    """The shapes attribute classifier as a torch-fidelity feature extractor.

    Features: ``"trunk"`` — the classifier's flattened 4×4 feature map (it keeps layout, so the
    distance sees position as well as shape and colour); ``"logits"`` — all attribute logits,
    concatenated. Inputs are uint8 (B, 3, H, W) at the resolution the judge was trained at.

    Args:
        name: Registered name (:data:`SHAPES_JUDGE`).
        features_list: Requested features.
        feature_extractor_weights_path: A judge file written by :func:`m2gan.eval.shapes_judge.save_judge`.
    """

    def __init__(self, name: str, features_list: Sequence[str], feature_extractor_weights_path=None, **kwargs) -> None:
        super().__init__(name, list(features_list))
        if feature_extractor_weights_path is None:
            raise ValueError(
                f"the {SHAPES_JUDGE} feature extractor needs a judge file (feature_extractor_weights_path)"
            )
        self.judge, self.resolution = load_judge(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("trunk", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise ValueError("the shapes judge has no single class distribution: Inception Score needs Inception")
        return "trunk"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            raise ValueError(
                f"the shapes judge reads {self.resolution}px images, got {tuple(images.shape[-2:])}: "
                "use a judge trained at the model's resolution"
            )
        trunk = self.judge.trunk(images.float() / 127.5 - 1)  # (B, c3 * 16)
        logits = torch.cat([head(trunk) for head in self.judge.heads.values()], dim=1)  # (B, sum of classes)
        features = {"trunk": trunk, "logits": logits}
        return tuple(features[name] for name in self.features_list)


if SHAPES_JUDGE not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(SHAPES_JUDGE, ShapesJudgeFeatures)


def metric_layers(extractor: str, metrics: Sequence[str]) -> dict[str, str]:
    """The feature layer each metric reads, torch-fidelity's defaults for ``extractor``."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    if extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(f"unknown feature extractor {extractor!r}; registered: {sorted(FEATURE_EXTRACTORS_REGISTRY)}")
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor]
    return {metric: cls.get_default_feature_layer_for_metric(metric) for metric in metrics}


def inception_hub_file() -> Path:
    """Where torch hub keeps torch-fidelity's Inception weights once downloaded (it looks there first)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


def resolve_weights(extractor: str, weights_path: str | os.PathLike | None, download: bool) -> str | None:
    """The weights file to load for ``extractor``; None means "let torch-fidelity download it".

    Raises:
        WeightsUnavailable: No local file and ``download`` is False.
        FileNotFoundError: ``weights_path`` names a file that does not exist.
    """
    if weights_path is not None:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"feature_extractor_weights_path {weights_path}: no such file")
        return str(weights_path)
    if extractor == INCEPTION:
        if inception_hub_file().is_file():
            return str(inception_hub_file())
        if download:
            return None
        raise WeightsUnavailable(
            f"no Inception weights on this machine: set feature_extractor_weights_path to a local copy of "
            f"{URL_INCEPTION_V3} (or place it at {inception_hub_file()}), or allow download=true"
        )
    raise WeightsUnavailable(f"the {extractor} feature extractor needs feature_extractor_weights_path")


def create_extractor(
    extractor: str, layers: Iterable[str], weights_path: str | None, device: torch.device | str = "cpu"
) -> FeatureExtractorBase:
    """Build a registered torch-fidelity extractor that returns ``layers``, on ``device``.

    A ``.pth``/``.pt`` weights file must load as plain tensors (``weights_only=True``) before
    torch-fidelity reads it, which it does with full unpickling: a file that would run code is refused.
    """
    if weights_path is not None and not str(weights_path).endswith(".safetensors"):
        try:
            torch.load(weights_path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # noqa: BLE001 - any failure means we do not hand it to an unpickler
            raise ValueError(f"{weights_path}: not a plain state dict of tensors, refused ({error})") from None
    model = create_feature_extractor(
        extractor, sorted(set(layers)), cuda=False, feature_extractor_weights_path=weights_path, verbose=False
    )
    return model.to(device)


def weights_identity(extractor: str, weights_path: str | None) -> str:
    """Extractor name + content digest of its weights: the part of a cache key that says *which* network."""
    return f"{extractor}:{file_digest(weights_path) if weights_path else os.path.basename(URL_INCEPTION_V3)}"


@torch.inference_mode()
def extract_features(
    extractor: FeatureExtractorBase, batches: Iterable[torch.Tensor], device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Features of uint8 image batches (B, 3, H, W): ``{layer: (N, D) float32 CPU}`` ({} for no batches)."""
    device = device or next(extractor.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in extractor.features_list}
    for images in batches:
        if images.dtype != torch.uint8:
            raise ValueError(f"feature extractors read uint8 images, got {images.dtype}")
        for name, value in zip(extractor.features_list, extractor(images.to(device))):
            parts[name].append(value.float().cpu())
    if not parts[extractor.features_list[0]]:
        return {}
    return {name: torch.cat(values) for name, values in parts.items()}


def fid_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean and covariance of (N, D) features, as torch-fidelity computes them (float64)."""
    return fid_features_to_statistics(features)


def compute_metrics(
    generated: dict[str, torch.Tensor],
    real: dict[str, torch.Tensor],
    layers: dict[str, str],
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    real_statistics: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """torch-fidelity's metrics between generated and real features (FID/KID/PRC) or of generated alone (IS).

    Returns keys ``fid``, ``kid`` and ``kid_std``, ``isc`` and ``isc_std``, ``precision``, ``recall``
    and ``f_score`` for the metrics in ``layers``. KID's subset size is capped at the smaller set.
    ``real_statistics`` (:func:`fid_statistics` of the real FID features) spares recomputing the
    real set's covariance at every evaluation.
    """
    out: dict[str, float] = {}
    if "fid" in layers:
        real_statistics = real_statistics or fid_statistics(real[layers["fid"]])
        generated_statistics = fid_statistics(generated[layers["fid"]])
        out["fid"] = fid_statistics_to_metric(generated_statistics, real_statistics, verbose=False)[
            "frechet_inception_distance"
        ]
    if "kid" in layers:
        layer = layers["kid"]
        size = min(kid_subset_size, len(generated[layer]), len(real[layer]))
        kid = kid_features_to_metric(
            generated[layer], real[layer], kid_subset_size=size, kid_subsets=kid_subsets, verbose=False
        )
        out["kid"], out["kid_std"] = kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]
    if "isc" in layers:
        isc = isc_features_to_metric(generated[layers["isc"]])
        out["isc"], out["isc_std"] = isc["inception_score_mean"], isc["inception_score_std"]
    if "prc" in layers:
        layer = layers["prc"]
        prc = prc_features_to_metric(generated[layer], real[layer], verbose=False)
        out.update(precision=prc["precision"], recall=prc["recall"], f_score=prc["f_score"])
    return out


def metric_names(extractor: str, count: int, prefix: str = "val") -> dict[str, str]:
    """Logged name of each :func:`compute_metrics` key, stating the protocol: extractor and sample count.

    ``count`` generated images against the cached real set: 2,000 with Inception gives
    ``val/fid_2k``; with the shapes judge ``val/fid_shapes_2k``, so the two are never mixed up.
    """
    tag = (
        "" if extractor == INCEPTION else "_" + ("shapes" if extractor == SHAPES_JUDGE else extractor.replace("-", "_"))
    )
    n = f"{count // 1000}k" if count % 1000 == 0 else str(count)
    keys = ("fid", "kid", "kid_std", "isc", "isc_std", "precision", "recall", "f_score")
    names = {key: f"{prefix}/{key}{tag}_{n}" for key in keys}
    names.update(isc=f"{prefix}/is{tag}_{n}", isc_std=f"{prefix}/is_std{tag}_{n}")
    return names


def real_cache_file(cache_dir: str | os.PathLike, fields: dict) -> Path:
    """Cache file of real features for ``fields`` (dataset, count, resolution, extractor identity, …)."""
    return Path(cache_dir) / "fid" / f"real-{key_digest(fields)}.safetensors"


def load_real(path: Path, layers: Iterable[str]) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """Cached real features of ``layers`` and the captions of those images, or None on a miss."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        tensors = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - a damaged cache file is recomputed, not trusted
        print(f"m2gan: ignoring unreadable FID cache {path}: {error}", file=sys.stderr)
        return None
    if any(layer not in tensors for layer in layers):
        return None
    return {layer: tensors[layer] for layer in layers}, json.loads(metadata.get("captions", "[]"))


def save_real(path: Path, features: dict[str, torch.Tensor], captions: list[str], fields: dict) -> None:
    """Write real features, their captions and the key's fields (for a human reading the cache)."""
    metadata = {"captions": json.dumps(captions), "fields": json.dumps(fields, sort_keys=True)}
    with atomic_path(path) as temporary:
        save_file({k: v.contiguous() for k, v in features.items()}, str(temporary), metadata=metadata)
