"""Word attention made visible: each word's map over the image, per attention stage."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from callbacks import SampleGrid
from m2gan import sample
from m2gan.model import M2GAN
from m2gan.tokenizer import PAD_ID
from tests.helpers import TINY_MODEL, model_of


@pytest.fixture
def attending(datamodule) -> M2GAN:
    model = model_of(
        vocab_size=datamodule.vocab_size, max_length=datamodule.max_length, word_attention_sides=(8, 16), **TINY_MODEL
    )
    model.set_tokenizer(datamodule.tokenizer)
    with torch.no_grad():  # open the gates, so the attention changes the image
        for stage in model.ema.generator.attention.values():
            stage.gate.fill_(1.0)
    return model


def test_each_words_map_sums_to_one_over_positions_and_padding_gets_none(attending):
    prompts = ["a red circle", "a small blue square at the top left"]  # the first is padded to the second's length
    records = attending.ema.attention_maps(prompts, num_images=2, seed=4)
    assert [r.prompt for r in records] == [prompts[0]] * 2 + [prompts[1]] * 2
    assert records[0].words == ["a", "red", "circle"]  # no [BOS], [EOS] or padding
    assert records[2].words == ["a", "small", "blue", "square", "at", "the", "top", "left"]
    for record in records:
        assert sorted(record.maps) == [8, 16]
        for side, maps in record.maps.items():
            assert maps.shape == (len(record.words), side, side)
            torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(len(record.words)))
    # The images are generate's, and padding draws no attention in the generator itself.
    images = torch.stack([r.image for r in records])
    assert (images.int() - attending.ema.generate(prompts, num_images=2, seed=4).int()).abs().max() <= 1
    tokens = attending.ema.encode_prompts(prompts)
    words, sentence = attending.ema.text_encoder(tokens)
    weights = {}
    attending.ema.generator(torch.randn(2, 8), sentence, words, tokens == PAD_ID, attention_maps=weights)
    for w in weights.values():  # (B, positions, L)
        assert (w[0][:, tokens[0] == PAD_ID] == 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2]))
    # A prompt's maps do not depend on the longer prompt it was padded for.
    alone = attending.ema.attention_maps(prompts[:1], num_images=2, seed=4)[0]
    for side in (8, 16):
        torch.testing.assert_close(alone.maps[side], records[0].maps[side], atol=1e-5, rtol=1e-4)


def test_generate_attention_maps_writes_one_grid_per_image(attending, datamodule, checkpoint, tmp_path, capsys):
    import pytorch_lightning as pl

    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(attending, datamodule)
    path = tmp_path / "attending.ckpt"
    trainer.save_checkpoint(path)
    out = tmp_path / "out"
    argv = ["generate", str(path), "--prompt", "a red circle", "--prompt", "a blue square", "--num-images", "2"]
    assert sample.main([*argv, "--attention-maps", "--out", str(out)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    grids = sorted(p.name for p in (out / "attention").glob("*.png"))
    assert grids == sorted(p.name for p in out.glob("*.png"))  # one per image, same names
    width, height = Image.open(out / "attention" / grids[0]).size
    assert width > 4 * 128 and height > 2 * 128  # the image and three words; two stages
    # A generator without word attention has nothing to map: one line, nothing written.
    plain = ["generate", checkpoint, "--prompt", "a red circle", "--attention-maps", "--out", str(tmp_path / "plain")]
    assert sample.main(plain) == 1
    err = capsys.readouterr().err
    assert (
        "--attention-maps: this model's generator has no word attention" in err and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "plain").exists()


def test_sample_grid_logs_attention_maps_for_an_attending_generator(attending, datamodule, tmp_path):
    import pytorch_lightning as pl

    grid = SampleGrid(["a red circle", "a small blue square"], every_n_batches=100, num_images=2)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
        callbacks=[grid], enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(attending, datamodule)
    (maps,) = (tmp_path / "samples").glob("batch_*_attention.png")
    records = attending.ema.attention_maps(grid.prompts, num_images=2, seed=grid.seed)
    assert Image.open(maps).height > 2 * 2 * 32 * 2 * grid.scale  # two prompts, two stages each
    assert records[0].words == ["a", "red", "circle"]
