"""Does the generator use its noise? Where in the generator the noise's effect is lost.

For ``--prompts`` validation captions of the shapes data, each generator stage's output is compared
between two draws that differ only in their noise, and between two that differ only in their
caption (same noise). Per stage it prints the mean distance over the mean size of the output for
each (``noise``, ``text``) and their ratio, and for the image the same distance between two real
images of one caption, the spread to reach: a ratio near 0 at the image while the first stage
still moves says the later stages wash the noise out; near 0 from the first stage on says the
noise hardly enters. At the first stage it also prints how large the noise's and the sentence's
contributions to the first layer's output are. Both the EMA generator (the one that samples) and
the trained one are read: a gap between them says the averaging removes what the noise does.

    python benchmarks/noise_probe.py runs/m2gan/<run>/checkpoints/last.ckpt [more checkpoints]
    python benchmarks/noise_probe.py --quick    # an untrained tiny model: a smoke run
"""

from __future__ import annotations

import argparse
import os

import torch

from m2gan.data.shapes import ShapesDataset
from m2gan.model import M2GAN
from m2gan.settings import overridden


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help="checkpoints of models trained on the shapes data")
    parser.add_argument("--prompts", type=int, default=128, help="validation captions compared")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="an untrained tiny model, 16 prompts: a smoke run")
    args = parser.parse_args()
    if not args.checkpoints and not args.quick:
        parser.error("name at least one checkpoint (or --quick)")
    return args


@torch.no_grad()
def stage_outputs(text_encoder, generator, tokens: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each stage's output, flattened per row: the first layer (4×4), each block, the image."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [generator.fc.register_forward_hook(lambda m, i, out: outputs.__setitem__("first layer (4x4)", out))]
    for block in generator.blocks:
        hooks.append(block.register_forward_hook(lambda m, i, out: outputs.__setitem__(f"block {out.shape[-1]}px", out)))
    words, sentence = text_encoder(tokens)
    try:
        outputs["image"] = generator(z, sentence, words, tokens == 0)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: value.flatten(1) for name, value in outputs.items()}


def probe(text_encoder, generator, tokens: torch.Tensor, seed: int) -> list[tuple[str, float, float]]:
    """(stage, noise change, text change) per stage, each a distance over the stage's mean output norm."""
    generator_ = torch.Generator().manual_seed(seed)
    z, z_other = (torch.randn(len(tokens), generator.noise_dim, generator=generator_) for _ in range(2))
    shifted = tokens.roll(1, dims=0)  # each row's caption replaced by another's
    base = stage_outputs(text_encoder, generator, tokens, z)
    noise = stage_outputs(text_encoder, generator, tokens, z_other)
    text = stage_outputs(text_encoder, generator, shifted, z)
    rows = []
    for name, value in base.items():
        size = value.norm(dim=1).mean()
        rows.append((name, ((value - noise[name]).norm(dim=1).mean() / size).item(),
                     ((value - text[name]).norm(dim=1).mean() / size).item()))  # fmt: skip
    return rows


@torch.no_grad()
def first_layer_shares(text_encoder, generator, tokens: torch.Tensor, seed: int) -> tuple[float, float]:
    """Mean norms of the first layer's noise part ``W_z z`` and sentence part ``W_s s`` (its input is [z, s])."""
    z = torch.randn(len(tokens), generator.noise_dim, generator=torch.Generator().manual_seed(seed))
    _, sentence = text_encoder(tokens)
    weight = generator.fc.weight  # (out, Z + S)
    noise_part = z @ weight[:, : generator.noise_dim].T
    text_part = sentence @ weight[:, generator.noise_dim :].T
    return noise_part.norm(dim=1).mean().item(), text_part.norm(dim=1).mean().item()


def real_spread(data: ShapesDataset, count: int, seed: int) -> float:
    """The image row's reference: two real images of one caption (:meth:`ShapesDataset.renditions`)
    apart, over the mean image norm, as the noise column measures the generator's."""
    pairs = torch.stack([data.renditions(i, 2, seed) for i in range(count)])  # (P, 2, 3, H, W)
    first, second = pairs[:, 0].flatten(1), pairs[:, 1].flatten(1)
    return ((first - second).norm(dim=1).mean() / first.norm(dim=1).mean()).item()


def report(name: str, model: M2GAN, prompts: list[str], seed: int) -> None:
    tokens = model.ema.encode_prompts(prompts)
    print(f"\n{name}")
    print(f"{'generator':<8} {'stage':<18} {'noise':>7} {'text':>7} {'noise/text':>10}")
    for label, (text_encoder, generator) in (
        ("EMA", (model.ema.text_encoder, model.ema.generator)),
        ("trained", (model.text_encoder, model.generator)),
    ):
        for stage, noise, text in probe(text_encoder.eval(), generator.eval(), tokens, seed):
            print(f"{label:<8} {stage:<18} {noise:>7.3f} {text:>7.3f} {noise / max(text, 1e-12):>10.2f}")
        noise_part, text_part = first_layer_shares(text_encoder, generator, tokens, seed)
        print(f"{label:<8} first layer's input parts: |W_z z| {noise_part:.2f}, |W_s s| {text_part:.2f}")


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    count = 16 if args.quick else args.prompts
    models = [(os.path.relpath(p), M2GAN.load(p)) for p in args.checkpoints]
    if args.quick:
        from m2gan.data import CaptionDataModule

        data = CaptionDataModule(batch_size=8, train_size=64, val_size=16, tokenizer_fit_size=300)
        tiny = {"noise_dim": 8, "text_width": 16, "sentence_dim": 16, "g_channels": 8, "d_channels": 8,
                "max_channels": 16}  # fmt: skip
        model = M2GAN(**overridden({}, vocab_size=data.vocab_size, max_length=data.max_length, **tiny))
        model.set_tokenizer(data.tokenizer)
        models.append(("untrained tiny model", model))
    print(f"noise_probe: {count} validation captions, {torch.get_num_threads()} cores")
    for resolution in sorted({model.hparams.resolution for _, model in models}):
        data = ShapesDataset("val", count, resolution, seed=args.seed)
        print(f"real images of one caption, {resolution}px: {real_spread(data, count, args.seed):.3f} apart (image row)")
    for name, model in models:
        data = ShapesDataset("val", count, model.hparams.resolution, seed=args.seed)
        report(name, model.eval(), [data.caption(i) for i in range(count)], args.seed)


if __name__ == "__main__":
    main()
