"""Train and evaluate M2GAN from the command line: ``python train.py fit`` (see ``--help``)."""

from pathlib import Path

from m2gan.cli import main

if __name__ == "__main__":
    main(default_config=str(Path(__file__).resolve().parent / "configs" / "default.yaml"))
