"""The built-in shapes data: deterministic, captions that say what the image shows."""

from __future__ import annotations

import re

import pytest
import torch

from m2gan.data import CaptionDataModule, ShapesDataset
from m2gan.data.shapes import _PLACES, _RELATIONS, _SYNONYMS, COLOURS, COLS, ROWS, SHAPES, SIZES


def test_same_seed_and_index_give_the_same_sample():
    a, b = ShapesDataset("train", 100, seed=3), ShapesDataset("train", 100, seed=3)
    for i in (0, 7, 99):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert a[i]["caption"] == b[i]["caption"]
        assert a.scene(i) == b.scene(i)


def test_seeds_and_splits_give_different_samples():
    train, val, other_seed = (ShapesDataset(s, 50, seed=k) for s, k in (("train", 0), ("val", 0), ("train", 1)))
    assert not torch.equal(train.image(0), val.image(0))
    assert [train.caption(i) for i in range(50)] != [val.caption(i) for i in range(50)]
    assert [train.scene(i) for i in range(50)] != [other_seed.scene(i) for i in range(50)]


@pytest.mark.parametrize("resolution", [32, 64])
def test_images_have_the_asked_resolution_and_range(resolution):
    image = ShapesDataset("train", 4, resolution)[0]["image"]
    assert image.shape == (3, resolution, resolution) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1


def _mentions(caption: str, key: str) -> bool:
    return any(re.search(rf"\b{re.escape(word)}\b", caption) for word in _SYNONYMS[key])


def test_single_object_captions_name_its_attributes():
    dataset = ShapesDataset("train", 300, two_object_prob=0.0)
    for i in range(300):
        (obj,) = dataset.scene(i).objects
        caption = dataset.caption(i)
        assert _mentions(caption, SHAPES[obj.shape]), caption
        assert _mentions(caption, COLOURS[obj.colour]), caption
        assert _mentions(caption, SIZES[obj.size]), caption
        assert any(place in caption for place in _PLACES[(ROWS[obj.row], COLS[obj.col])]), caption


def test_two_object_captions_name_both_and_their_relation():
    dataset = ShapesDataset("train", 200, two_object_prob=1.0)
    for i in range(200):
        a, b = dataset.scene(i).objects
        caption = dataset.caption(i)
        assert _mentions(caption, COLOURS[a.colour]) and _mentions(caption, COLOURS[b.colour]), caption
        relation = next(k for k, words in _RELATIONS.items() if any(f" {w} a " in caption for w in words))
        if relation in ("left", "right"):
            assert (b.col - a.col > 0) == (relation == "left"), caption
        else:
            assert (b.row - a.row > 0) == (relation == "above"), caption


def test_the_object_is_drawn_in_its_colour_where_the_scene_says():
    dataset = ShapesDataset("train", 50, resolution=32, two_object_prob=0.0)
    from m2gan.data.shapes import _RGB

    for i in range(50):
        (obj,) = dataset.scene(i).objects
        image = (dataset.image(i) + 1) / 2  # (3, H, W) in [0, 1]
        cy, cx = int((obj.row + 0.5) / 3 * 32), int((obj.col + 0.5) / 3 * 32)
        centre = image[:, cy, cx]
        if SHAPES[obj.shape] == "triangle":  # the triangle's centroid sits below the cell centre
            centre = image[:, cy + 1, cx]
        assert torch.allclose(centre, torch.tensor(_RGB[COLOURS[obj.colour]]), atol=0.15), (i, centre)


def test_wording_varies():
    dataset = ShapesDataset("train", 200, two_object_prob=0.0)
    first_words = {dataset.caption(i).split()[0] for i in range(200)}
    assert len(first_words) >= 3
    refs = dataset.references(0, count=5)
    assert refs[0] == dataset.caption(0) and len(set(refs)) >= 2


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("training")
    with pytest.raises(IndexError):
        ShapesDataset("train", 10)[10]


def test_datamodule_batches_are_tokenised(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)
    assert batch["tokens"].shape == (8, datamodule.max_length)
    assert datamodule.tokenizer.decode(batch["tokens"][0]) == batch["caption"][0].lower()
    # The same data config always fits the same vocabulary (resume and sampling rely on it).
    same_config = CaptionDataModule(batch_size=8, train_size=64, val_size=16, test_size=16, tokenizer_fit_size=300)
    assert same_config.tokenizer == datamodule.tokenizer


def test_batch_size_is_the_global_batch_split_between_processes():
    from types import SimpleNamespace

    from m2gan.data import CaptionDataModule

    data = CaptionDataModule(batch_size=32, train_size=64, val_size=64, tokenizer_fit_size=50)
    assert data.val_dataloader().batch_size == 32  # no trainer: one process
    data.trainer = SimpleNamespace(world_size=4)
    assert data.val_dataloader().batch_size == 8
    with pytest.raises(ValueError, match="data.batch_size=32 is not divisible by the 3 processes"):
        data.batch_per_process(3)


def test_the_pair_judge_reads_the_same_scene_whichever_object_a_caption_names_first():
    from m2gan.data.shapes import ShapeObject, named_relation
    from m2gan.eval.shapes_judge import reading_order

    red_circle = ShapeObject(shape=0, colour=0, size=0, row=1, col=0)  # middle left
    blue_square = ShapeObject(shape=1, colour=2, size=1, row=1, col=2)  # middle right
    assert (
        reading_order(red_circle, blue_square) == reading_order(blue_square, red_circle) == (red_circle, blue_square, 0)
    )
    above = ShapeObject(shape=2, colour=3, size=0, row=0, col=1)
    assert reading_order(blue_square.__class__(3, 4, 0, 2, 1), above) == (above, ShapeObject(3, 4, 0, 2, 1), 1)
    assert named_relation("a big red disc to the left of a tiny blue box") == "left"
    assert named_relation("there is a red circle under a blue square") == "below"
    assert named_relation("a red circle in the top left") is None


def test_held_out_combinations_never_appear_in_training_but_do_in_evaluation():
    held_out = ("purple triangle", "cyan cross")
    excluded = {(COLOURS.index("purple"), SHAPES.index("triangle")), (COLOURS.index("cyan"), SHAPES.index("cross"))}

    def combinations(dataset):
        return [(o.colour, o.shape) for i in range(len(dataset)) for o in dataset.scene(i).objects]

    train = combinations(ShapesDataset("train", 2000, two_object_prob=0.5, held_out=held_out))
    assert not excluded & set(train)
    assert len(set(train)) == len(COLOURS) * len(SHAPES) - 2  # every other combination is still drawn
    test = combinations(ShapesDataset("test", 2000, two_object_prob=0.5, held_out=held_out))
    assert excluded <= set(test)
    # scenes without a held-out object are unchanged, so a run without held_out is the same data
    plain, holding = ShapesDataset("train", 300), ShapesDataset("train", 300, held_out=held_out)
    same = [i for i in range(300) if not {(o.colour, o.shape) for o in plain.scene(i).objects} & excluded]
    assert len(same) > 250 and all(plain.caption(i) == holding.caption(i) for i in same)
    assert plain.fingerprint != holding.fingerprint  # caches of training data tell them apart
    with pytest.raises(ValueError, match="'pink triangle' is not '<colour> <shape>'"):
        ShapesDataset("val", 10, held_out=["pink triangle"])


@pytest.mark.parametrize("objects", [1, 2])
def test_renditions_keep_what_the_caption_says_and_draw_the_rest_anew(monkeypatch, objects):
    from m2gan.data import shapes

    data = ShapesDataset("val", 50, 32, seed=0, two_object_prob=float(objects == 2))
    drawn = []
    real_render = shapes.render
    monkeypatch.setattr(shapes, "render", lambda scene, *args: drawn.append(scene) or real_render(scene, *args))
    images = data.renditions(3, 6, seed=0)
    scene = data.scene(3)
    assert images.shape == (6, 3, 32, 32) and len(drawn) == 6
    assert torch.equal(images, data.renditions(3, 6, seed=0))  # a function of its arguments
    for other in drawn:
        assert [(o.shape, o.colour, o.size) for o in other.objects] == [(o.shape, o.colour, o.size) for o in scene.objects]
        if objects == 1:
            assert other.objects[0].cell == scene.objects[0].cell
        else:
            assert shapes.relation(*other.objects) == shapes.relation(*scene.objects)
    assert len({other.background for other in drawn}) == 6  # each drawn anew
    assert (images[1:] - images[:-1]).abs().amax(dim=(1, 2, 3)).min() > 0.05
    if objects == 2:
        assert len({tuple(o.cell for o in other.objects) for other in drawn}) > 1  # placements vary too


def test_training_batches_carry_another_caption_of_each_image():
    data = CaptionDataModule(batch_size=8, train_size=64, val_size=16, test_size=16, tokenizer_fit_size=300)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    train = data.datasets["train"]
    paraphrases = [train.references(int(i), 2)[1] for i in batch["index"]]
    assert torch.equal(batch["paraphrase"], data.tokenizer.encode(paraphrases))
    assert not torch.equal(batch["paraphrase"], batch["tokens"])
