"""Sampling from checkpoints and exports: the m2gan-sample and m2gan-export commands, and the Python API."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

import m2gan
from m2gan import export as export_module
from m2gan import sample


def run(argv, capsys) -> tuple[int, str, str]:
    status = sample.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def png_pixels(folder) -> dict[str, torch.Tensor]:
    return {p.name: torch.from_numpy(__import__("numpy").asarray(Image.open(p))) for p in sorted(folder.glob("*.png"))}


def test_same_seed_same_images_and_manifest_matches_files(checkpoint, tmp_path, capsys):
    args = ["generate", checkpoint, "--prompt", "a red circle on the left", "--prompt", "a big blue square"]
    assert run([*args, "--num-images", "3", "--seed", "5", "--out", str(tmp_path / "a")], capsys)[0] == 0
    assert (
        run([*args, "--num-images", "3", "--seed", "5", "--batch-size", "2", "--out", str(tmp_path / "b")], capsys)[0]
        == 0
    )
    assert run([*args, "--num-images", "3", "--seed", "6", "--grid", "--out", str(tmp_path / "c")], capsys)[0] == 0
    a, b, c = (png_pixels(tmp_path / name) for name in "abc")
    assert len(a) == 6 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the batch size changes nothing
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "c" / "grid.png").is_file()
    manifest = [json.loads(line) for line in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(row["file"] for row in manifest) == sorted(a)
    assert [row["prompt"] for row in manifest] == ["a red circle on the left"] * 3 + ["a big blue square"] * 3
    assert {row["seed"] for row in manifest} == {5}


def test_python_api_matches_the_command(checkpoint, tmp_path, capsys):
    model = m2gan.load(checkpoint)
    images = model.generate(["a red circle on the left"], num_images=2, seed=5, truncation=1.5)
    run(["generate", checkpoint, "--prompt", "a red circle on the left", "--num-images", "2", "--seed", "5",
         "--truncation", "1.5", "--out", str(tmp_path / "out")], capsys)  # fmt: skip
    files = png_pixels(tmp_path / "out")
    assert torch.equal(files["0000_01.png"], images[1].permute(1, 2, 0))
    # Truncated noise stays within its bound.
    z = model.noise(1000, torch.Generator().manual_seed(0), truncation=0.5)
    assert z.abs().max() <= 0.5 and z.std() > 0.2


def test_export_round_trips_bit_exactly(checkpoint, tmp_path, capsys):
    assert export_module.main([checkpoint, "--out", str(tmp_path / "export")]) == 0
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    from_ckpt, from_export = m2gan.load(checkpoint), m2gan.load(tmp_path / "export")
    for name in export_module.EXPORTED_MODULES:
        for key, value in getattr(from_ckpt, name).state_dict().items():
            assert torch.equal(getattr(from_export, name).state_dict()[key], value), f"{name}.{key}"
    prompts = ["a red circle on the left", "a tiny green cross"]
    assert torch.equal(from_ckpt.generate(prompts, 2, seed=3), from_export.generate(prompts, 2, seed=3))
    images = from_ckpt.generate(prompts, 1, seed=3)
    assert from_ckpt.caption(images, num_beams=2) == from_export.caption(images, num_beams=2)
    with pytest.raises(ValueError, match="only the EMA"):
        m2gan.load(tmp_path / "export", ema=False)
    # Exporting into a folder that holds files is refused.
    assert export_module.main([checkpoint, "--out", str(tmp_path / "export")]) == 1


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_runs_code_is_refused(checkpoint, tmp_path, capsys):
    marker = tmp_path / "pwned"
    crafted = torch.load(checkpoint, weights_only=True)
    crafted["state_dict"]["evil"] = _Payload(str(marker))
    torch.save(crafted, tmp_path / "crafted.ckpt")
    with pytest.raises(export_module.CheckpointError, match="refused.*m2gan-export"):
        m2gan.load(tmp_path / "crafted.ckpt")
    status, _, err = run(["generate", str(tmp_path / "crafted.ckpt"), "--prompt", "a red circle",
                          "--out", str(tmp_path / "out")], capsys)  # fmt: skip
    assert status == 1 and "refused" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def _truncated(checkpoint, tmp_path):
    data = Path(checkpoint).read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    return str(tmp_path / "cut.ckpt")


def _newer_config(checkpoint, tmp_path):
    data = torch.load(checkpoint, weights_only=True)
    data["hyper_parameters"]["flux_capacitor"] = 3
    torch.save(data, tmp_path / "newer.ckpt")
    return str(tmp_path / "newer.ckpt")


def _without_captioner(checkpoint, tmp_path):
    data = torch.load(checkpoint, weights_only=True)
    data["state_dict"] = {k: v for k, v in data["state_dict"].items() if "captioner" not in k.split(".")[:2]}
    torch.save(data, tmp_path / "old.ckpt")
    return str(tmp_path / "old.ckpt")


@pytest.mark.parametrize(
    "make_checkpoint, args, message",
    [
        (lambda c, d: str(d / "absent.ckpt"), [], "checkpoint not found"),
        (_truncated, [], "truncated, corrupt"),
        (_newer_config, [], "unknown model setting 'flux_capacitor'"),
        (_without_captioner, [], "missing weights of ema.captioner: ema.captioner."),
        (lambda c, d: c, ["--prompt", " "], "--prompt number 2 is empty"),
        (lambda c, d: c, ["--device", "cuda"], "CUDA is not available"),
        (lambda c, d: c, ["--out-at-file"], "cannot write there"),
    ],
)
def test_bad_input_is_one_clear_line_and_nothing_is_written(
    checkpoint, tmp_path, capsys, make_checkpoint, args, message
):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    if args == ["--out-at-file"]:
        (tmp_path / "file.txt").write_text("x")
        out, args = tmp_path / "file.txt" / "out", []
    argv = ["generate", make_checkpoint(checkpoint, tmp_path), "--prompt", "a red circle", *args, "--out", str(out)]
    status, _, err = run(argv, capsys)
    assert status == 1
    assert err.startswith("m2gan-sample: error:") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_prompt_file_blank_lines_unknown_words_and_long_prompts(checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    long_prompt = " ".join(["a red circle on the left"] * 10)
    prompts.write_text(f"a red circle\n\n   \na purple zebra\n{long_prompt}\n")
    status, _, err = run(["generate", checkpoint, "--prompts-file", str(prompts), "--out", str(tmp_path / "o")], capsys)
    assert status == 0, err
    assert "2 blank lines skipped" in err
    assert err.count("zebra") == 1 and "truncated" in err
    assert len(list((tmp_path / "o").glob("*.png"))) == 3


def test_caption_mode_writes_jsonl_and_names_a_bad_file(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i}.png")
    status, out, err = run(["caption", checkpoint, str(folder), "--num-beams", "2"], capsys)
    assert status == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [os.path.basename(r["file"]) for r in rows] == ["0.png", "1.png"] and all("caption" in r for r in rows)

    (folder / "notes.png").write_text("not an image")
    status, out, err = run(["caption", checkpoint, str(folder), "--out", str(tmp_path / "c.jsonl")], capsys)
    assert status == 1 and "notes.png: not a readable image" in err
    assert not (tmp_path / "c.jsonl").exists()


def test_pickle_module_is_not_needed_to_read_an_export(checkpoint, tmp_path, monkeypatch):
    export_module.export(m2gan.load(checkpoint), tmp_path / "export")

    def forbidden(*args, **kwargs):
        raise AssertionError("an export must load without unpickling")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert m2gan.load(tmp_path / "export").generate(["a red circle"]).shape[0] == 1


def test_interpolation_ends_are_generates_images_and_the_path_is_smooth(checkpoint):
    model = m2gan.load(checkpoint)
    a, b, c = "a red circle on the left", "a big blue square at the top", "a small green cross"
    morph = model.interpolate([a, b, c], frames=9, seed=3)  # frames at positions 0, 0.25, …, 2
    assert morph.shape == (9, 3, 32, 32) and morph.dtype == torch.uint8
    for frame, prompt in ((0, a), (4, b), (8, c)):  # each prompt is a key frame: generate's own image
        assert (morph[frame].int() - model.generate([prompt], seed=3)[0].int()).abs().max() <= 1
    walk = model.interpolate([a], frames=9, seed=3)
    ends = model.generate([a], num_images=2, seed=3)
    assert (walk[0].int() - ends[0].int()).abs().max() <= 1 and (walk[-1].int() - ends[1].int()).abs().max() <= 1
    # Smooth: no step between neighbouring frames is as large as the distance between the ends.
    steps = (walk[1:].float() - walk[:-1].float()).abs().mean(dim=(1, 2, 3))
    assert steps.max() < (walk[-1].float() - walk[0].float()).abs().mean()
    sweep = model.truncation_sweep(a, [0.5, 1.0, 2.0], seed=3)
    for frame, psi in enumerate([0.5, 1.0, 2.0]):
        assert (sweep[frame].int() - model.generate([a], seed=3, truncation=psi)[0].int()).abs().max() <= 1


def test_interpolate_command_writes_frames_a_gif_and_a_strip(checkpoint, tmp_path, capsys):
    args = ["interpolate", checkpoint, "--prompt", "a red circle on the left", "--prompt", "a big blue square"]
    status, _, err = run([*args, "--frames", "6", "--seed", "2", "--out", str(tmp_path / "morph")], capsys)
    assert status == 0, err
    frames = png_pixels(tmp_path / "morph")
    assert sorted(frames) == sorted([f"frame_{k:03d}.png" for k in range(6)] + ["strip.png"])
    expected = m2gan.load(checkpoint).interpolate(["a red circle on the left", "a big blue square"], frames=6, seed=2)
    assert torch.equal(frames["frame_005.png"], expected[5].permute(1, 2, 0))
    gif = Image.open(tmp_path / "morph" / "interpolation.gif")
    assert gif.n_frames == 6
    manifest = [json.loads(line) for line in (tmp_path / "morph" / "manifest.jsonl").read_text().splitlines()]
    assert [row["position"] for row in manifest] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    sweep = [*args[:4], "--truncation-sweep", "0.5", "1", "--out", str(tmp_path / "sweep")]
    assert run(sweep, capsys)[0] == 0 and len(list((tmp_path / "sweep").glob("frame_*.png"))) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "1"], "frames must be at least 2"),
        (["--frames", "100000"], "at most 256"),
        (["--prompt", " "], "--prompt number 2 is empty"),
        (["--prompt", "a blue square", "--truncation-sweep", "1"], "draws one prompt, got 2"),
        (["--truncation-sweep", "nan"], "--truncation-sweep value must be a finite number"),
        (["--truncation", "0"], "truncation must be positive"),
        (["--fps", "0"], "--fps must be positive"),
        (["--seed", "-1"], "seed must be at least 0"),
    ],
)
def test_interpolate_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    status, _, err = run(["interpolate", checkpoint, "--prompt", "a red circle", *args, "--out", str(out)], capsys)
    assert status == 1 and err.startswith("m2gan-sample: error:") and len(err.strip().splitlines()) == 1
    assert message in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
