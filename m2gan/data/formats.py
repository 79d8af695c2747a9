"""On-disk image–caption formats, each read into :class:`~m2gan.data.captioned.Record` lists per split.

* ``coco``: ``annotations/captions_{train,val}{2014,2017}.json`` + ``{train,val}{year}/`` images.
  COCO's test images have no captions, so the validation split doubles as the test split.
* ``cub``: CUB-200-2011 with the text-to-image captions: ``images.txt``, ``images/<class>/<img>.jpg``,
  ``bounding_boxes.txt``, ``text/<class>/<img>.txt`` (one caption per line). The split comes from
  ``train_test_split.txt`` when present, else by class (the last quarter of the classes, sorted, is
  the test split, as in the text-to-image literature's 150/50 class split). No pickles are read.
* ``folder``: images with ``metadata.jsonl`` or ``metadata.csv`` (``file_name``, ``text``: a
  string or a list of strings — the Hugging Face image-folder convention), or ``name.jpg`` +
  ``name.txt`` pairs (one caption per line). ``train/``, ``validation/`` (or ``val/``) and ``test/``
  sub-folders are the splits when present; otherwise a stable hash of each file name assigns it.

A missing image, a caption without an image, an image without captions, an empty caption or a
caption file that is not UTF-8 is skipped and counted in :class:`~m2gan.data.captioned.Problems`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

from m2gan.data.captioned import SPLITS, Problems, Record, clean_captions
from m2gan.images import IMAGE_SUFFIXES


def hashed_split(name: str, val_fraction: float, test_fraction: float) -> str:
    """A split for ``name`` from a stable hash: the same file lands in the same split on every machine."""
    u = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


# -- COCO ----------------------------------------------------------------------------------------


def coco_records(root: str | os.PathLike, problems: Problems) -> dict[str, list[Record]]:
    """COCO captions (2017 or 2014 layout) under ``root``."""
    root = Path(root)
    splits: dict[str, list[Record]] = {}
    for split, coco_split in (("train", "train"), ("val", "val")):
        candidates = sorted((root / "annotations").glob(f"captions_{coco_split}20*.json"), reverse=True)
        if not candidates:
            raise FileNotFoundError(f"{root / 'annotations'}: no captions_{coco_split}2017.json or 2014 file")
        annotations = candidates[0]
        images_dir = root / annotations.stem.removeprefix("captions_")  # train2017/, val2014/, …
        try:
            data = json.loads(annotations.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{annotations}: not a COCO captions file ({error})") from None
        try:
            files = {image["id"]: image["file_name"] for image in data.get("images", [])}
            captions: dict[int, list[str]] = defaultdict(list)
            entries = data.get("annotations", [])
            if entries and not any("caption" in annotation for annotation in entries):
                keys = sorted({key for annotation in entries for key in annotation})
                raise ValueError(
                    f'{annotations}: no annotation has a "caption" key (its annotations have {", ".join(keys)}): '
                    "not a COCO captions file"
                )
            for annotation in entries:
                if annotation.get("image_id") not in files:
                    problems.add("captions without an image", f"{annotations.name}: annotation {annotation.get('id')}")
                    continue
                if "caption" not in annotation:
                    problems.add('annotations without a "caption" key', f"{annotations.name}: annotation "
                                 f"{annotation.get('id')}")  # fmt: skip
                    continue
                captions[annotation["image_id"]].append(annotation["caption"])
        except (AttributeError, KeyError, TypeError) as error:
            raise ValueError(
                f'{annotations}: not a COCO captions file: expected an object with "images" (each with "id" and '
                f'"file_name") and "annotations" (each with "image_id" and "caption"); {type(error).__name__}: {error}'
            ) from None
        records = []
        for image_id, file_name in sorted(files.items()):
            path = images_dir / file_name
            texts = clean_captions(captions.get(image_id, []), str(path), problems)
            if not path.is_file():
                problems.add("missing image files", str(path))
            elif not texts:
                problems.add("images without captions", str(path))
            else:
                records.append(Record(str(path), texts))
        splits[split] = records
    splits["test"] = splits["val"]
    return splits


# -- CUB-200-2011 --------------------------------------------------------------------------------


def _read_lines(path: Path, problems: Problems) -> list[str] | None:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        problems.add("caption files that are not UTF-8", str(path))
        return None


def cub_records(root: str | os.PathLike, problems: Problems, crop_to_box: bool = True) -> dict[str, list[Record]]:
    """CUB-200-2011 birds with one caption file per image under ``root``."""
    root = Path(root)
    listing = root / "images.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: missing (the CUB-200-2011 image list)")
    images = dict(line.split(maxsplit=1) for line in listing.read_text().splitlines() if line.strip())
    boxes = {}
    if crop_to_box:
        box_file = root / "bounding_boxes.txt"
        if not box_file.is_file():
            raise FileNotFoundError(f"{box_file}: missing (needed for crop_to_box; set it false to use whole images)")
        for line in box_file.read_text().splitlines():
            if line.strip():
                image_id, *box = line.split()
                boxes[image_id] = tuple(float(v) for v in box)
    split_file = root / "train_test_split.txt"
    if split_file.is_file():
        is_train = dict(line.split() for line in split_file.read_text().splitlines() if line.strip())
        split_of = {image_id: "train" if is_train.get(image_id) == "1" else "test" for image_id in images}
    else:
        classes = sorted({path.split("/")[0] for path in images.values()})
        test_classes = set(classes[len(classes) - len(classes) // 4 :])
        split_of = {i: "test" if path.split("/")[0] in test_classes else "train" for i, path in images.items()}

    splits: dict[str, list[Record]] = {"train": [], "test": []}
    for image_id, relative in sorted(images.items(), key=lambda item: int(item[0])):
        path = root / "images" / relative
        text_file = (root / "text" / relative).with_suffix(".txt")
        if not path.is_file():
            problems.add("missing image files", str(path))
            continue
        if not text_file.is_file():
            problems.add("images without captions", str(path))
            continue
        lines = _read_lines(text_file, problems)
        if lines is None:
            continue
        texts = clean_captions(lines, str(text_file), problems)
        if not texts:
            problems.add("images without captions", str(path))
            continue
        splits[split_of[image_id]].append(Record(str(path), texts, boxes.get(image_id)))
    splits["val"] = splits["test"]
    return splits


# -- image folder --------------------------------------------------------------------------------


def _folder_split(folder: Path, problems: Problems) -> list[Record]:
    """Records of one folder: metadata.jsonl/csv if present, else name.ext + name.txt pairs."""
    entries: dict[str, list] = {}
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.is_file():
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, text = row["file_name"], row["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                problems.add("metadata lines without file_name and text", f"{jsonl}:{number}")
                continue
            entries.setdefault(name, []).extend(text if isinstance(text, list) else [text])
    elif table.is_file():
        with open(table, newline="", encoding="utf-8") as file:
            for number, row in enumerate(csv.DictReader(file), 2):
                if not row.get("file_name") or "text" not in row:
                    problems.add("metadata lines without file_name and text", f"{table}:{number}")
                    continue
                entries.setdefault(row["file_name"], []).append(row["text"] or "")
    else:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                lines = _read_lines(path.with_suffix(".txt"), problems) if path.with_suffix(".txt").is_file() else []
                if lines is not None:
                    entries[path.name] = lines
        images = {path.stem for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES}
        for text in sorted(folder.glob("*.txt")):
            if text.stem not in images:
                problems.add("captions without an image", str(text))

    records = []
    for name, captions in entries.items():
        path = folder / name
        texts = clean_captions(captions, str(path), problems)
        if not path.is_file():
            problems.add("captions without an image", str(path))
        elif not texts:
            problems.add("images without captions", str(path))
        else:
            records.append(Record(str(path), texts))
    return records


def folder_records(
    root: str | os.PathLike, problems: Problems, val_fraction: float = 0.05, test_fraction: float = 0.05
) -> dict[str, list[Record]]:
    """An image folder with captions: split sub-folders if present, else a hash split of file names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    named = {"train": "train", "validation": "val", "val": "val", "test": "test"}
    sub = {split: root / folder for folder, split in named.items() if (root / folder).is_dir()}
    if "train" in sub:
        splits = {split: _folder_split(folder, problems) for split, folder in sub.items()}
        splits.setdefault("val", splits.get("test", []))
        splits.setdefault("test", splits["val"])
        return splits
    splits = {split: [] for split in SPLITS}
    for record in _folder_split(root, problems):
        splits[hashed_split(Path(record.image).name, val_fraction, test_fraction)].append(record)
    return splits
