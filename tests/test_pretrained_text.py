"""Pretrained text encoders (model.text_encoder): tiny randomly initialised CLIP-text, T5-encoder and
BERT models written with ``save_pretrained`` in a temporary folder stand in for downloaded ones."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

import m2gan
from m2gan.checkpoint_io import CheckpointError
from m2gan.data import CaptionDataModule
from m2gan.export import export
from m2gan.export import main as export_main
from m2gan.model import M2GAN
from m2gan.pretrained import PretrainedTextError, folder_digest, load_pretrained_text, write_random_text_model
from m2gan.sample import main as sample_main
from tests.helpers import TINY, TINY_MODEL, checkpoints, model_of, run_cli, run_train

pytest.importorskip("transformers")  # the [hf] extra, part of [test]; like the demo's tests without gradio

KINDS = ["clip", "t5", "bert"]
CAPTIONS = ["a large red circle in the top left", "a small blue square at the bottom", "a big green cross"]


@pytest.fixture(scope="module")
def data() -> CaptionDataModule:
    return CaptionDataModule(batch_size=8, train_size=32, val_size=8, test_size=8, tokenizer_fit_size=300)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, data) -> dict:
    """One tiny model folder per kind; its tokenizer knows half the caption words whole and spells the rest."""
    words = data.tokenizer.vocabulary()[4:]
    root = tmp_path_factory.mktemp("text-models")
    return {kind: write_random_text_model(root / kind, kind, words[::2]) for kind in KINDS}


def pretrained_model(data, folder, **settings) -> M2GAN:
    model = model_of(
        vocab_size=data.vocab_size, max_length=data.max_length, text_encoder=str(folder), **TINY_MODEL, **settings
    )
    model.set_tokenizer(data.tokenizer)
    return model


def fit(model: M2GAN, data: CaptionDataModule) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)
    return trainer


# ---------------------------------------------------------------------------------------- reading words


@pytest.mark.parametrize("kind", KINDS)
def test_each_caption_reads_as_the_models_own_tokenizer_splits_it(data, folders, kind):
    model = pretrained_model(data, folders[kind])
    encoder, tokenizer = model.text_encoder, load_pretrained_text(folders[kind]).tokenizer
    tokens = data.tokenizer.encode(CAPTIONS)
    ids, mask, owner = encoder._model_tokens(tokens)
    for row, caption in enumerate(CAPTIONS):
        words = data.tokenizer.normalize(caption).split()
        expected = tokenizer([words], is_split_into_words=True)
        assert ids[row][mask[row]].tolist() == expected["input_ids"][0]
        # Each piece belongs to its word (the caption's word i sits at position i + 1, after [BOS]).
        owners = [owner_of_piece - 1 for owner_of_piece, kept in zip(owner[row].tolist(), mask[row]) if kept]
        for piece, word in enumerate(expected.word_ids(0)):
            if word is not None:
                assert owners[piece] == word


@pytest.mark.parametrize("kind", KINDS)
def test_features_ignore_padding_and_the_rest_of_the_batch(data, folders, kind):
    encoder = pretrained_model(data, folders[kind]).text_encoder.eval()
    tokens = data.tokenizer.encode(CAPTIONS)
    words, sentence = encoder(tokens)
    alone_words, alone_sentence = encoder(tokens[2:, :6])  # "a big green cross": 4 words + [BOS], [EOS]
    torch.testing.assert_close(alone_sentence, sentence[2:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone_words, words[2:, :6], atol=1e-5, rtol=1e-5)
    # The sentence vector is read where the model puts it: CLIP's pooled closing token, else the mean.
    ids, mask, _ = encoder._model_tokens(tokens)
    output = encoder.model(input_ids=ids, attention_mask=mask.long())
    if kind == "clip":
        pooled = output.pooler_output
    else:
        pooled = (output.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(sentence, encoder.to_sentence(pooled), atol=1e-5, rtol=1e-5)
    assert (sentence[0] - sentence[1]).norm() / sentence[0].norm() > 0.05  # different captions, different vectors


def test_the_encoder_runs_under_bf16_autocast(data, folders):
    encoder = pretrained_model(data, folders["clip"]).text_encoder.eval()
    tokens = data.tokenizer.encode(CAPTIONS)
    words, sentence = encoder(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_words, low_sentence = encoder(tokens)
    assert low_sentence.dtype == torch.bfloat16
    torch.testing.assert_close(low_sentence.float(), sentence, atol=0.1, rtol=0.05)
    torch.testing.assert_close(low_words.float(), words, atol=0.1, rtol=0.05)


def test_words_past_the_models_positions_are_cut_and_the_closing_token_kept(data, folders):
    encoder = pretrained_model(data, folders["clip"]).text_encoder
    encoder.max_positions = 5
    tokens = data.tokenizer.encode(CAPTIONS[:1])
    with pytest.warns(UserWarning, match="left out"):
        ids, mask, _ = encoder._model_tokens(tokens)
    tokenizer = load_pretrained_text(folders["clip"]).tokenizer
    full = tokenizer([data.tokenizer.normalize(CAPTIONS[0]).split()], is_split_into_words=True)["input_ids"][0]
    assert ids[0].tolist() == [*full[:4], tokenizer.eos_token_id]


# ---------------------------------------------------------------------------------------- frozen or trained


def test_a_frozen_encoder_stays_unchanged_shared_and_out_of_checkpoints(data, folders, tmp_path):
    model = pretrained_model(data, folders["clip"])
    backbone = model.text_encoder.model
    before = {name: value.clone() for name, value in backbone.state_dict().items()}
    projection = model.text_encoder.to_sentence.weight.detach().clone()
    assert model.ema.text_encoder.model is backbone  # the EMA copy shares it, no second copy
    optimised = {id(p) for opt in model.configure_optimizers() for group in opt.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in backbone.parameters()}

    trainer = fit(model, data)
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not backbone.training  # no dropout in a frozen model, whatever mode training sets
    assert not torch.equal(model.text_encoder.to_sentence.weight, projection)  # the projections did train

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not [name for name in state if "backbone" in name or "embeddings" in name]
    assert bytes(state["text_encoder.source_digest"].tolist()) == folder_digest(folders["clip"])


def test_a_trainable_encoder_learns_at_its_own_rate_and_is_saved(data, folders, tmp_path):
    model = pretrained_model(data, folders["bert"], text_encoder_trainable=True, lr_text_encoder=3e-4)
    backbone = model.text_encoder.model
    before = {name: value.clone() for name, value in backbone.state_dict().items()}
    _, opt_d = model.configure_optimizers()
    assert list(opt_d.param_groups[1]["params"]) == list(backbone.parameters())
    assert opt_d.param_groups[1]["lr"] == 3e-4
    assert model.ema.text_encoder.model is not backbone  # an EMA copy of its own
    assert backbone.training  # fine-tuned with its dropout, as the module it belongs to trains

    trainer = fit(model, data)
    changed = [name for name, value in backbone.state_dict().items() if not torch.equal(value, before[name])]
    assert "encoder.layer.0.attention.self.query.weight" in changed
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    pipeline = m2gan.load(path)
    torch.testing.assert_close(
        pipeline.text_encoder.model.state_dict(), model.ema.text_encoder.model.state_dict(), rtol=0, atol=0
    )
    assert torch.equal(pipeline.generate(CAPTIONS, seed=3), model.ema.eval().generate(CAPTIONS, seed=3))


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_train_sample_export_and_reload(tmp_path, folders, kind, capsys):
    folder = tmp_path / "text-model"
    shutil.copytree(folders[kind], folder)
    digest = folder_digest(folder)
    trained = run_cli(["fit", *TINY, f"--model.text.text_encoder={folder}"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (last,) = checkpoints(tmp_path)
    state = torch.load(last, weights_only=True)["state_dict"]
    assert not [name for name in state if name.startswith(("text_encoder.backbone", "ema.text_encoder.backbone"))]
    assert bytes(state["ema.text_encoder.source_digest"].tolist()) == digest == folder_digest(folder)

    prompts = ["a red circle", "a blue square at the bottom"]
    expected = m2gan.load(last).generate(prompts, seed=5)
    assert sample_main(["generate", str(last), "--prompt", prompts[0], "--out", str(tmp_path / "samples")]) == 0
    assert len(list((tmp_path / "samples").glob("*.png"))) == 1

    named, whole = tmp_path / "export-named", tmp_path / "export-whole"
    assert export_main([str(last), "--out", str(named)]) == 0
    assert export_main([str(last), "--out", str(whole), "--include-text-encoder"]) == 0
    assert not [name for name in load_file(named / "model.safetensors") if "backbone" in name]
    assert json.loads((named / "config.json").read_text())["pipeline"]["text"]["text_encoder"] == str(folder)
    assert torch.equal(m2gan.load(named).generate(prompts, seed=5), expected)

    # The original folder gone: the self-contained export still samples; the rest say so in one line.
    shutil.move(folder, tmp_path / "moved")
    assert torch.equal(m2gan.load(whole).generate(prompts, seed=5), expected)
    capsys.readouterr()
    for source in (last, named):
        assert sample_main(["generate", str(source), "--prompt", "a red circle", "--out", str(tmp_path / "x")]) == 1
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and f"{folder}: no such folder" in error, error
    # ... unless told where it went.
    assert torch.equal(m2gan.load(last, text_encoder=tmp_path / "moved").generate(prompts, seed=5), expected)
    moved = ["--text-encoder", str(tmp_path / "moved")]
    assert sample_main(["generate", str(named), "--prompt", "a red circle", "--out", str(tmp_path / "x"), *moved]) == 0
    # Another model in its place: refused, naming the folder, for sampling and for resuming (train.py
    # runs check_checkpoint before any work and prints its error as one line).
    write_random_text_model(folder, kind, ["a", "red", "circle"], seed=1)
    refused = f"pretrained text model at {folder} is not the one it was trained with"
    with pytest.raises(CheckpointError, match=refused):
        m2gan.load(last)
    settings = torch.load(last, weights_only=True)["hyper_parameters"]
    with pytest.raises(CheckpointError, match=refused):
        model_of(**{k: v for k, v in settings.items() if not k.startswith("_")}).check_checkpoint(last)
    # Each command names its own option for the original folder.
    assert sample_main(["generate", str(last), "--prompt", "a red circle", "--out", str(tmp_path / "y")]) == 1
    error = capsys.readouterr().err.strip()
    assert refused in error and error.endswith("give the original folder with --text-encoder FOLDER"), error
    resumed = run_cli(["fit", *TINY, f"--model.text.text_encoder={folder}", f"--ckpt_path={last}"], tmp_path)
    assert resumed.returncode == 1
    assert resumed.stderr.strip().endswith("give the original folder with --model.text.text_encoder FOLDER")


@pytest.mark.slow
def test_ddp_fine_tunes_a_pretrained_encoder_in_two_processes(tmp_path, folders):
    ddp = ["--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    args = [f"--model.text.text_encoder={folders['bert']}", "--model.text.text_encoder_trainable=true"]
    trained = run_train(["fit", *TINY, *ddp, *args], tmp_path)  # a child: Lightning starts rank 1 as another
    errors = [line for line in trained.stderr.splitlines() if "Error" in line]  # every rank's, not only the last
    assert trained.returncode == 0, "\n".join(errors)[-3000:] or trained.stderr[-3000:]
    (last,) = checkpoints(tmp_path)
    state = torch.load(last, weights_only=True)["state_dict"]
    start = load_pretrained_text(folders["bert"]).model.state_dict()
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(state[f"text_encoder.backbone.{name}"], start[name])  # it trained
    assert m2gan.load(last).generate(["a red circle"]).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------- bad folders


def break_folder(kind: str, folder, model_folders) -> str:
    """Make ``folder`` a bad model folder of ``kind``; return a pattern of what its error must say."""
    if kind == "missing":
        return "no such folder"
    folder.mkdir()
    if kind == "empty":
        return r"holds no transformers model \(no config.json\)$"
    if kind == "no weights":
        shutil.copy(model_folders["clip"] / "config.json", folder)
        return "holds no model weights"
    if kind == "another kind":
        (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        (folder / "model.safetensors").write_bytes(b"")
        return "holds a 'gpt2' model, which cannot encode captions"
    if kind == "another tokenizer":  # a BERT model with the larger CLIP tokenizer
        shutil.copytree(model_folders["bert"], folder, dirs_exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(model_folders["clip"] / name, folder / name)
        return r"its tokenizer has \d+ tokens but the model embeds only \d+: the tokenizer belongs to another model$"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "empty", "no weights", "another kind", "another tokenizer"])
def test_a_bad_folder_is_one_clear_error(tmp_path, folders, data, kind):
    folder = tmp_path / "model"
    message = break_folder(kind, folder, folders)
    with pytest.raises(PretrainedTextError, match=re.escape(f"text encoder {folder}: ") + message):
        pretrained_model(data, folder)


def test_a_bad_folder_stops_train_py_with_one_line(tmp_path):
    result = run_cli(["fit", *TINY, f"--model.text.text_encoder={tmp_path / 'nowhere'}"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: invalid configuration: text encoder {tmp_path / 'nowhere'}: no such folder"
    )


def test_settings_a_pretrained_encoder_cannot_take_are_refused(data, folders, checkpoint):
    with pytest.raises(CheckpointError, match="has the built-in text encoder"):
        m2gan.load(checkpoint, text_encoder=folders["clip"])
    with pytest.raises(ValueError, match="caption_adversarial_weight > 0 needs the built-in text encoder"):
        pretrained_model(data, folders["t5"], caption_adversarial_weight=0.5)
    with pytest.raises(ValueError, match="text_encoder_trainable needs model.text.text_encoder"):
        model_of(vocab_size=data.vocab_size, max_length=data.max_length, text_encoder_trainable=True)
    built_in = model_of(vocab_size=data.vocab_size, max_length=data.max_length, **TINY_MODEL)
    built_in.set_tokenizer(data.tokenizer)
    with pytest.raises(ValueError, match="built-in text encoder, whose weights every export holds"):
        export(built_in.ema, "unused", include_text_encoder=True)
