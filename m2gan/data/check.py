"""``m2gan-data check``: read a dataset the way training will and report what is in it.

    m2gan-data check /data/coco --format coco
    m2gan-data check /data/CUB_200_2011 --format cub --resolution 64
    m2gan-data check /data/my-images --format folder
    m2gan-data check "shards/train-{000..099}.tar" --format webdataset --val-shards "shards/val-000.tar"

Prints, per split, the number of usable images and captions per image, the vocabulary size of the
tokenizer fitted on the training captions, and the problems found (skipped samples by reason, with
examples). Exit status 1 when the data cannot be used at all, with the reason on one line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import get_args

from torch.utils.data import IterableDataset

from m2gan.data.datamodule import DataFormat


def describe(datamodule) -> list[str]:
    """Report lines for a built :class:`~m2gan.data.CaptionDataModule`."""
    lines = []
    seen = set()
    for split, dataset in datamodule.datasets.items():
        if id(dataset) in seen:
            lines.append(f"{split}: same images as the split above")
            continue
        seen.add(id(dataset))
        if isinstance(dataset, IterableDataset):
            count = 0
            for count, _ in enumerate(dataset.raw_samples(), 1):  # noqa: B007 - counting is the point
                pass
            lines.append(
                f"{split}: {count} samples in {len(dataset.urls)} shards (streamed; bad ones skipped when read)"
            )
            continue
        per_image = [len(dataset.references(i)) for i in range(len(dataset))]
        lines.append(
            f"{split}: {len(dataset)} images, captions per image {min(per_image)}–{max(per_image)} "
            f"(mean {statistics.mean(per_image):.1f})"
        )
    lines.append(f"vocabulary: {datamodule.vocab_size} tokens (special tokens included) from the training captions")
    problems = datamodule.problems
    lines.append(f"problems: {problems.total} samples skipped" + (":" if problems.total else ""))
    for reason, count in problems.counts.items():
        lines.append(f"  {count} {reason}, e.g. {'; '.join(problems.examples[reason])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``m2gan-data``."""
    parser = argparse.ArgumentParser(
        prog="m2gan-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="count images, captions and problems of a dataset")
    check.add_argument("path", help="dataset folder, or training shards for --format webdataset")
    check.add_argument("--format", required=True, choices=[f for f in get_args(DataFormat) if f != "shapes"])
    check.add_argument("--val-shards", help="webdataset: validation shards")
    check.add_argument("--resolution", type=int, default=64, help="image side the images are checked at")
    check.add_argument("--no-crop-to-box", action="store_true", help="cub: use whole images")
    args = parser.parse_args(argv)

    import warnings

    from m2gan.data import CaptionDataModule

    options = {"format": args.format, "resolution": args.resolution, "tokenizer_fit_size": 10**9}
    if args.format == "webdataset":
        options.update(train_shards=args.path, val_shards=args.val_shards or args.path)
    else:
        options.update(root=args.path, crop_to_box=not args.no_crop_to_box)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the problems are listed below, in full
            datamodule = CaptionDataModule(**options)
    except (ValueError, FileNotFoundError) as error:
        print(f"m2gan-data: error: {error}", file=sys.stderr)
        return 1
    for line in describe(datamodule):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
