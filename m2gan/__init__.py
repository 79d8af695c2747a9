"""M2GAN: multimodal (text <-> image) GAN training on PyTorch Lightning.

Sampling: ``import m2gan; model = m2gan.load(path); model.generate([...]); model.caption(images)``.
"""


def load(path, map_location="cpu", ema=True):  # noqa: ANN001, ANN201 - typed in m2gan.export.load
    """Load a training checkpoint (``.ckpt``) or an export folder as a sampling pipeline; see :func:`m2gan.export.load`."""
    from m2gan.export import load as load_model  # deferred: importing m2gan stays light

    return load_model(path, map_location, ema)
