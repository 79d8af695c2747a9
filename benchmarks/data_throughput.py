"""Is data loading ever the bottleneck? Loader throughput per format against what training consumes.

For each on-disk format (folder, coco, cub, webdataset) a synthetic dataset of ``--images``
photo-sized JPEGs (500×375, captions in each layout) is written to a temporary folder. Then, at
64×64 and 256×256:

* loader: images/s of the format's training ``DataLoader`` (``num_workers=2``, batch 32, random
  crop on, tokenising included), median over ``--repeats`` passes after a warm-up pass;
* training: images/s the real-data configs' model (``configs/sizes/gpu-64px.yaml``: 32/32 channels, cap 256)
  consumes in a training batch on this machine (median step time after warm-up);
* ratio = loader / training (target ≥ 3: loading is never what a run waits for).

The two are measured one after the other, not concurrently: on a machine this small the workers
and the training step compete for the same cores, so the ratio says how much headroom loading has,
not how a concurrent run divides the cores.

    python benchmarks/data_throughput.py            # ~6 minutes on 2 cores
    python benchmarks/data_throughput.py --quick
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from PIL import Image
from timing import BatchTimer  # benchmarks/timing.py

from m2gan.data import CaptionDataModule
from m2gan.model import M2GAN
from m2gan.settings import overridden

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("folder", "coco", "cub", "webdataset")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640, help="training images per synthetic dataset")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the training set")
    parser.add_argument("--quick", action="store_true", help="128 images, one pass, 64 px only")
    return parser.parse_args()


def photos(count: int, seed: int = 0) -> list[bytes]:
    """``count`` 500×375 JPEGs with smooth colour and texture, so they compress like photographs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        low = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
        image = Image.fromarray(low).resize((500, 375), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 12, size=(375, 500, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def captions(i: int) -> list[str]:
    return [f"a photo number {i} of a thing", f"picture {i} with some colours", f"image {i}"]


def write_layouts(folder: Path, train: list[bytes], val: list[bytes]) -> dict[str, dict]:
    """The same images in every layout; returns each format's data-module arguments."""
    # folder: split sub-folders with metadata.jsonl
    for split, images in (("train", train), ("validation", val)):
        (folder / "folder" / split).mkdir(parents=True)
        rows = []
        for i, data in enumerate(images):
            (folder / "folder" / split / f"{i:05d}.jpg").write_bytes(data)
            rows.append(json.dumps({"file_name": f"{i:05d}.jpg", "text": captions(i)}))
        (folder / "folder" / split / "metadata.jsonl").write_text("\n".join(rows))
    # coco
    (folder / "coco" / "annotations").mkdir(parents=True)
    for split, images in (("train", train), ("val", val)):
        (folder / "coco" / f"{split}2017").mkdir()
        entries, annotations = [], []
        for i, data in enumerate(images):
            (folder / "coco" / f"{split}2017" / f"{i:012d}.jpg").write_bytes(data)
            entries.append({"id": i, "file_name": f"{i:012d}.jpg"})
            annotations += [{"id": 10 * i + k, "image_id": i, "caption": c} for k, c in enumerate(captions(i))]
        (folder / "coco" / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"images": entries, "annotations": annotations})
        )
    # cub
    lines, boxes, split_lines = [], [], []
    for i, data in enumerate(train + val, 1):
        relative = f"{i % 20:03d}.Bird/{i:05d}.jpg"
        (folder / "cub" / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / "cub" / "images" / relative).write_bytes(data)
        (folder / "cub" / "text" / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / "cub" / "text" / relative).with_suffix(".txt").write_text("\n".join(captions(i)))
        lines.append(f"{i} {relative}")
        boxes.append(f"{i} 50 40 400 300")
        split_lines.append(f"{i} {1 if i <= len(train) else 0}")
    for name, content in (("images.txt", lines), ("bounding_boxes.txt", boxes), ("train_test_split.txt", split_lines)):
        (folder / "cub" / name).write_text("\n".join(content))
    # webdataset: 8 training shards, 1 validation shard
    (folder / "shards").mkdir()
    for name, images, shards in (("train", train, 8), ("val", val, 1)):
        for s in range(shards):
            with tarfile.open(folder / "shards" / f"{name}-{s:03d}.tar", "w") as tar:
                for i in range(s, len(images), shards):
                    for suffix, payload in (("jpg", images[i]), ("txt", "\n".join(captions(i)).encode())):
                        info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
    return {
        "folder": {"root": str(folder / "folder")},
        "coco": {"root": str(folder / "coco")},
        "cub": {"root": str(folder / "cub")},
        "webdataset": {
            "train_shards": str(folder / "shards" / "train-{000..007}.tar"),
            "val_shards": str(folder / "shards" / "val-000.tar"),
        },
    }


def loader_rate(data: CaptionDataModule, repeats: int) -> float:
    loader = data.train_dataloader()
    counts = []
    for _ in loader:  # warm-up pass: workers start, files enter the page cache
        pass
    for _ in range(repeats):
        start, images = time.perf_counter(), 0
        for batch in loader:
            images += batch["image"].shape[0]
        counts.append(images / (time.perf_counter() - start))
    return statistics.median(counts)


def training_rate(data: CaptionDataModule, resolution: int, batches: int) -> float:
    """Images/s a training batch of the real-data configs' model consumes (data already in memory)."""
    config = yaml.safe_load((ROOT / "configs" / "sizes" / "gpu-64px.yaml").read_text())["model"]
    model = M2GAN(**overridden(config, vocab_size=data.vocab_size, max_length=data.max_length, resolution=resolution))
    model.set_tokenizer(data.tokenizer)
    batch = next(iter(data.train_dataloader()))
    timer = BatchTimer()
    loader = torch.utils.data.DataLoader([batch] * batches, batch_size=None)  # the same batch, pre-loaded
    pl.Trainer(
        max_steps=2 * batches, limit_val_batches=0, logger=False, callbacks=[timer], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    ).fit(model, train_dataloaders=loader)  # fmt: skip
    return batch["image"].shape[0] / statistics.median(timer.times[1:])


def main() -> None:
    args = parse_args()
    count, repeats = (128, 1) if args.quick else (args.images, args.repeats)
    resolutions = (64,) if args.quick else (64, 256)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        layouts = write_layouts(Path(tmp), photos(count), photos(max(32, count // 10), seed=1))
        for resolution in resolutions:
            common = {"resolution": resolution, "batch_size": 32, "num_workers": 2, "augment": True}
            train_rate = None
            for data_format in FORMATS:
                data = CaptionDataModule(format=data_format, **layouts[data_format], **common)
                rate = loader_rate(data, repeats)
                if train_rate is None:
                    train_rate = training_rate(data, resolution, batches=3 if args.quick or resolution > 64 else 6)
                rows.append((data_format, resolution, rate, train_rate))
    print(f"\ndata_throughput: {torch.get_num_threads()} threads, {os.cpu_count()} cores, num_workers=2, batch 32, "
          f"{count} training images of 500x375, median of {repeats}")  # fmt: skip
    for data_format, resolution, rate, train_rate in rows:
        print(f"{data_format:>10} {resolution:>3}px: loader {rate:7.0f} images/s, training consumes "
              f"{train_rate:6.1f} images/s -> ratio {rate / train_rate:6.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
