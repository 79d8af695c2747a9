"""Real data formats: tiny fixtures of each layout, including broken files, read through one interface."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2gan.data import CaptionDataModule
from m2gan.data.check import main as data_check
from m2gan.data.shards import CaptionShards
from m2gan.images import decode_image, load_image
from m2gan.model import M2GAN
from tests.helpers import ROOT, TINY_RUN, jpeg_bytes, run_cli, shards

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 230), "yellow": (240, 230, 30)}


def _picture(path: Path, colour=(200, 40, 40), size=(48, 36), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, **save)
    return path


def _broken_files(folder: Path) -> dict[str, Path]:
    """Corrupt, truncated and zero-byte 'images'."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt, truncated, empty = folder / "corrupt.jpg", folder / "truncated.jpg", folder / "empty.jpg"
    corrupt.write_bytes(b"this is not a jpeg at all" * 10)
    truncated.write_bytes(jpeg_bytes(size=(64, 64))[:200])
    empty.write_bytes(b"")
    return {"corrupt.jpg": corrupt, "truncated.jpg": truncated, "empty.jpg": empty}


# -- image decoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, save, expected",
    [
        ("L", {}, (128, 128, 128)),  # grayscale
        ("RGBA", {}, (200, 40, 40)),  # opaque alpha: the colour itself
        ("CMYK", {"format": "JPEG", "quality": 100}, (200, 40, 40)),
    ],
)
def test_images_of_any_mode_become_rgb(tmp_path, mode, save, expected):
    colour = (128, 128, 128) if mode == "L" else (200, 40, 40)
    path = _picture(tmp_path / f"image.{'jpg' if save else 'png'}", colour, mode=mode, **save)
    pixels = ((load_image(path, 32) + 1) * 127.5).round()
    assert pixels.shape == (3, 32, 32)
    assert pixels.mean(dim=(1, 2)).tolist() == pytest.approx(expected, abs=6)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16)).save(path)  # half of the 16-bit range
    pixels = (load_image(path, 16) + 1) * 127.5
    assert pixels.mean().item() == pytest.approx(127.5, abs=1.5)


def test_huge_jpegs_are_decoded_at_reduced_scale(tmp_path):
    path = _picture(tmp_path / "huge.jpg", size=(6000, 4000), quality=50)
    image = decode_image(path, 64)
    assert max(image.size) <= 6000 // 4  # libjpeg's DCT scaling: never the full 24 megapixels in memory
    assert load_image(path, 64).shape == (3, 64, 64)


# -- formats -----------------------------------------------------------------------------------


def _folder(root: Path) -> Path:
    """An image folder with metadata.jsonl, split sub-folders and every kind of bad entry."""
    for split, names in (("train", ["red", "green", "blue"]), ("validation", ["yellow"])):
        rows = [{"file_name": f"{n}.png", "text": [f"a {n} square", f"the colour {n}"]} for n in names]
        for n in names:
            _picture(root / split / f"{n}.png", COLOURS[n])
        rows += [
            {"file_name": "ghost.png", "text": "an image that is not there"},
            {"file_name": "silent.png", "text": "   "},
        ]
        _picture(root / split / "silent.png")
        _broken_files(root / split)
        rows += [
            {"file_name": name, "text": "a broken image"} for name in ("corrupt.jpg", "truncated.jpg", "empty.jpg")
        ]
        (root / split / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    return root


def test_image_folder_counts_groups_and_skips(tmp_path):
    root = _folder(tmp_path / "folder")
    with pytest.warns(UserWarning, match="skipped"):
        data = CaptionDataModule(format="folder", root=str(root), resolution=32, batch_size=2)
    train, val = data.datasets["train"], data.datasets["val"]
    assert (len(train), len(val)) == (3, 1)
    assert train.references(0) == ["a red square", "the colour red"]  # captions grouped per image
    counts = data.problems.counts
    assert counts["captions without an image"] == 2 and counts["empty captions"] == 2
    assert counts["images without captions"] == 2 and counts["unreadable images"] == 6
    assert counts["metadata lines without file_name and text"] == 2
    batch = next(iter(data.val_dataloader()))
    assert batch["image"].shape == (1, 3, 32, 32) and batch["references"] == [["a yellow square", "the colour yellow"]]


def test_image_folder_of_txt_pairs_and_csv_splits_by_hash(tmp_path):
    pairs = tmp_path / "pairs"
    for i in range(40):
        _picture(pairs / f"{i:03d}.jpg", (i * 6, 100, 50))
        (pairs / f"{i:03d}.txt").write_text(f"picture number {i}\nanother caption {i}\n")
    (pairs / "orphan.txt").write_text("a caption with no image")
    (pairs / "latin1.jpg").write_bytes(jpeg_bytes())
    (pairs / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    data = CaptionDataModule(format="folder", root=str(pairs), resolution=32, val_fraction=0.2, test_fraction=0.2)
    splits = {s: {Path(r.image).name for r in data.datasets[s].records} for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 40 and not (splits["train"] & splits["val"])
    assert not (splits["train"] & splits["test"]) and not (splits["val"] & splits["test"])
    assert data.problems.counts["captions without an image"] == 1
    assert data.problems.counts["caption files that are not UTF-8"] == 1

    table = tmp_path / "csv" / "train"
    for n in COLOURS:
        _picture(table / f"{n}.png", COLOURS[n])
    (table / "metadata.csv").write_text("file_name,text\n" + "".join(f"{n}.png,a {n} thing\n" for n in COLOURS))
    (table.parent / "test").mkdir()
    _picture(table.parent / "test" / "red.png", COLOURS["red"])
    (table.parent / "test" / "metadata.csv").write_text("file_name,text\nred.png,a red thing\n")
    data = CaptionDataModule(format="folder", root=str(table.parent), resolution=32)
    assert (len(data.datasets["train"]), len(data.datasets["val"])) == (4, 1)


def _coco(root: Path) -> Path:
    for split, names in (("train", ["red", "green", "blue"]), ("val", ["yellow"])):
        images, annotations = [], []
        for i, n in enumerate(names + ["nocaption", "corrupt"], 1):
            images.append({"id": i, "file_name": f"{i:012d}.jpg"})
            if n == "corrupt":
                (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
                (root / f"{split}2017" / f"{i:012d}.jpg").write_bytes(b"garbage")
            else:
                _picture(root / f"{split}2017" / f"{i:012d}.jpg", COLOURS.get(n, (0, 0, 0)))
            if n in COLOURS:
                annotations += [
                    {"id": 10 * i + k, "image_id": i, "caption": text}
                    for k, text in enumerate([f"A {n} picture.", f"Something {n}", ""])
                ]
            if n == "corrupt":
                annotations.append({"id": 999, "image_id": i, "caption": "broken"})
        images.append({"id": 77, "file_name": "missing.jpg"})
        annotations.append({"id": 998, "image_id": 77, "caption": "its file is missing"})
        annotations.append({"id": 997, "image_id": 12345, "caption": "no such image id"})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": annotations})
        )
    return root


def test_coco_layout(tmp_path):
    data = CaptionDataModule(format="coco", root=str(_coco(tmp_path / "coco")), resolution=32, batch_size=2)
    train = data.datasets["train"]
    assert len(train) == 3 and len(data.datasets["val"]) == 1 and data.datasets["test"] is data.datasets["val"]
    assert train.references(0) == ["A red picture.", "Something red"]
    counts = data.problems.counts
    assert counts["captions without an image"] == 2 and counts["images without captions"] == 2
    assert counts["missing image files"] == 2 and counts["unreadable images"] == 2
    assert counts["empty captions"] == 4
    assert data.tokenizer.unknown_words("a yellow picture") == ["yellow"]  # fitted on training captions only


def _cub(root: Path, with_split: bool = True) -> Path:
    classes = ["001.Red_bird", "002.Green_bird", "003.Blue_bird", "004.Yellow_bird"]
    lines, boxes, split = [], [], []
    image_id = 0
    for c, (cls, colour) in enumerate(zip(classes, COLOURS.values())):
        for k in range(2):
            image_id += 1
            relative = f"{cls}/{cls}_{k}.jpg"
            image = Image.new("RGB", (60, 40), (0, 0, 0))
            image.paste(colour, (20, 10, 40, 30))  # the "bird" sits in its bounding box
            (root / "images" / cls).mkdir(parents=True, exist_ok=True)
            image.save(root / "images" / relative, quality=95)
            (root / "text" / cls).mkdir(parents=True, exist_ok=True)
            (root / "text" / relative).with_suffix(".txt").write_text(f"a bird of class {c}\nthis bird is small\n\n")
            lines.append(f"{image_id} {relative}")
            boxes.append(f"{image_id} 20.0 10.0 20.0 20.0")
            split.append(f"{image_id} {1 if k == 0 else 0}")
    (root / "text" / classes[0] / f"{classes[0]}_1.txt").write_bytes(b"\xff\xfe\x00 not utf-8")
    (root / "images.txt").write_text("\n".join(lines))
    (root / "bounding_boxes.txt").write_text("\n".join(boxes))
    if with_split:
        (root / "train_test_split.txt").write_text("\n".join(split))
    return root


def test_cub_layout_with_split_file_and_bounding_boxes(tmp_path):
    data = CaptionDataModule(format="cub", root=str(_cub(tmp_path / "cub")), resolution=32)
    train, test = data.datasets["train"], data.datasets["test"]
    assert (len(train), len(test)) == (4, 3)  # one test caption file is not UTF-8
    assert data.problems.counts["caption files that are not UTF-8"] == 1
    assert train.references(0) == ["a bird of class 0", "this bird is small"]
    image = (train[0]["image"] + 1) * 127.5  # cropped to the box: all bird, no black background
    assert image[0].mean().item() > 180


def test_cub_without_a_split_file_splits_by_class(tmp_path):
    data = CaptionDataModule(format="cub", root=str(_cub(tmp_path / "cub", with_split=False)), resolution=32)
    train_classes = {Path(r.image).parent.name for r in data.datasets["train"].records}
    test_classes = {Path(r.image).parent.name for r in data.datasets["test"].records}
    assert test_classes == {"004.Yellow_bird"} and not train_classes & test_classes


def test_unusable_data_fails_at_setup_naming_the_path_and_problems(tmp_path):
    root = tmp_path / "broken"
    _broken_files(root)
    (root / "metadata.jsonl").write_text(
        "\n".join(json.dumps({"file_name": n, "text": "x"}) for n in ("corrupt.jpg", "truncated.jpg", "empty.jpg"))
    )
    with pytest.raises(ValueError, match=r"broken: no usable .*unreadable images"):
        CaptionDataModule(format="folder", root=str(root), resolution=32)
    with pytest.raises(FileNotFoundError, match="captions_train2017"):
        CaptionDataModule(format="coco", root=str(tmp_path), resolution=32)
    with pytest.raises(FileNotFoundError, match="images.txt"):
        CaptionDataModule(format="cub", root=str(tmp_path), resolution=32)


# -- WebDataset shards -------------------------------------------------------------------------


def test_webdataset_shards_are_split_across_ranks_and_workers(tmp_path, monkeypatch):
    urls = shards(tmp_path / "shards")
    seen = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen[rank] = [s["caption"] for s in CaptionShards(urls, 32, augment=False)]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert len(seen[0]) == len(seen[1]) == 6 and not set(seen[0]) & set(seen[1])
    loader = torch.utils.data.DataLoader(CaptionShards(urls, 32, augment=False), batch_size=None, num_workers=2)
    captions = [s["caption"] for s in loader]
    assert len(captions) == len(set(captions)) == 12  # each worker its own shards: nothing twice


def test_webdataset_datamodule_batches_and_counts_bad_samples(tmp_path):
    urls = shards(tmp_path / "train")
    val = shards(tmp_path / "val", count=1)
    with pytest.warns(UserWarning, match="skipped 2 bad samples"):
        data = CaptionDataModule(format="webdataset", train_shards=urls, val_shards=val, resolution=32, batch_size=4)
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["tokens"].shape[0] == 4
    assert len(data.datasets["val"]) == 3 and data.datasets["val"].references(0) == ["shard 0 sample 0"]


# -- the inspector -----------------------------------------------------------------------------


def test_data_check_reports_counts_and_problems(tmp_path, capsys):
    root = _folder(tmp_path / "folder")
    assert data_check(["check", str(root), "--format", "folder", "--resolution", "32"]) == 0
    out = capsys.readouterr().out
    assert "train: 3 images, captions per image 2–2" in out and "val: 1 images" in out
    assert "problems: 14 samples skipped" in out and "unreadable images" in out
    assert data_check(["check", str(tmp_path / "nowhere"), "--format", "folder"]) == 1
    assert "m2gan-data: error:" in capsys.readouterr().err


# -- end to end --------------------------------------------------------------------------------


@pytest.mark.parametrize("data_format", ["folder", "coco", "cub", "webdataset"])
def test_train_py_fits_each_format(tmp_path, data_format):
    if data_format == "webdataset":
        location = [
            f"--data.train_shards={shards(tmp_path / 'train')}",
            f"--data.val_shards={shards(tmp_path / 'val', 1)}",
        ]
    else:
        build = {"folder": _folder, "coco": _coco, "cub": _cub}[data_format]
        location = [f"--data.root={build(tmp_path / data_format)}"]
    configs = [ROOT / "configs" / "sizes" / "gpu-64px.yaml", ROOT / "configs" / "data" / f"{data_format}.yaml"]
    # The size file's own callbacks stay (TINY_RUN brings none).
    args = ["fit", *(f"--config={config}" for config in configs), *TINY_RUN, *location]
    args += ["--data.resolution=32", "--data.batch_size=2", "--trainer.max_steps=4", "--data.num_workers=0"]
    args += ["--trainer.val_check_interval=1"]
    # No Inception weights in this fresh TORCH_HOME: the config's FID callback must switch itself off.
    result = run_cli(args, tmp_path, env={"TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FID callback disabled" in result.stderr
    (last,) = tmp_path.glob("runs/m2gan/*/checkpoints/last.ckpt")
    model = M2GAN.load(last)
    with warnings.catch_warnings():  # words of this prompt may be unknown to the format's vocabulary
        warnings.simplefilter("ignore")
        assert model.ema.generate(["a red picture"], num_images=2).shape == (2, 3, 32, 32)


def test_a_visit_pairs_its_caption_with_another_caption_of_the_image():
    from m2gan.data.captioned import view

    image = Image.new("RGB", (40, 40), (200, 40, 40))
    captions = ["a red square", "a crimson block", "a red tile"]
    drawn = [view(image, captions, 32, np.random.default_rng(seed), flip=False)[1:] for seed in range(30)]
    assert all(caption != paraphrase for caption, paraphrase in drawn)
    assert {paraphrase for _, paraphrase in drawn} == set(captions)  # every caption serves as either
    assert view(image, captions, 32, None, flip=False)[1:] == ("a red square", "a crimson block")  # evaluation
    assert view(image, ["a red square"], 32, np.random.default_rng(0), flip=False)[1:] == ("a red square",) * 2
