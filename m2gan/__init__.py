"""M2GAN: multimodal (text <-> image) GAN training on PyTorch Lightning.

Sampling: ``import m2gan; model = m2gan.load(path); model.generate([...]); model.caption(images)``.
"""


def load(path, map_location="cpu", ema=True, text_encoder=None):  # noqa: ANN001, ANN201 - typed in m2gan.export.load
    """Load a training checkpoint (``.ckpt``) or an export folder as a sampling pipeline; see :func:`m2gan.export.load`."""
    from m2gan.export import load as load_model  # deferred: importing m2gan stays light

    return load_model(path, map_location, ema, text_encoder)


def __getattr__(name: str):  # noqa: ANN202 - the error class, imported only when asked for
    if name == "CheckpointError":  # what load raises for a file that is not a loadable checkpoint or export
        from m2gan.checkpoint_io import CheckpointError

        return CheckpointError
    raise AttributeError(f"module 'm2gan' has no attribute {name!r}")
