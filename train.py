"""Train and evaluate M2GAN from the command line: ``python train.py fit`` (see ``--help``).

Installed, the same command is ``m2gan-train`` (``m2gan-train fit``).
"""

from pathlib import Path

from callbacks import CollapseAlarm, FinalCheckpoint, SampleGrid
from m2gan.cli import M2GANCLI, main

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
NAMED_CALLBACKS = {"checkpoint": FinalCheckpoint, "samples": SampleGrid, "collapse": CollapseAlarm}
"""The callbacks every run has, tuned by name: ``--collapse.stop true``, ``--samples.every_n_batches 500``."""


def cli(args: list[str] | None = None) -> M2GANCLI | None:
    """The training CLI: ``configs/default.yaml`` under every command's own config; ``args`` default to ``sys.argv``."""
    return main(default_config=str(DEFAULT_CONFIG), args=args, named_callbacks=NAMED_CALLBACKS)


def run() -> None:
    """``m2gan-train``: the installed package's ``python train.py``."""
    cli()


if __name__ == "__main__":
    run()
