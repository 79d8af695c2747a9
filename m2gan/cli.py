"""LightningCLI for M2GAN: config links, device-aware precision, a logger that never stops training."""

from __future__ import annotations

import os
import pickle
import sys
import warnings

import torch
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from m2gan.checkpoint_io import AtomicCheckpointIO
from m2gan.loggers import run_dir

USAGE = """\
M2GAN: text-to-image GAN training with LightningCLI.

  python train.py fit                      train the default job (configs/default.yaml, built-in shapes data)
  python train.py fit --config FILE.yaml   train with your own config (merged over the default)
  python train.py fit --print_config       show the complete, commented config
  python train.py {validate,test,predict} --ckpt_path CKPT
  python train.py --help                   all options
"""


class RunConfigSaver(SaveConfigCallback):
    """Save the resolved config as ``config.yaml`` in this run's own folder.

    LightningCLI's default writes to ``trainer.log_dir``, which a ``WandbLogger`` shares between all
    runs of a folder, so the second run would fail; a run folder is unique per run.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer, pl_module, stage: str) -> None:
        folder = run_dir(trainer)
        os.makedirs(folder, exist_ok=True)
        self.parser.save(
            self.config,
            os.path.join(folder, self.config_filename),
            skip_none=False,
            overwrite=True,
            multifile=self.multifile,
        )


# Lightning warns that periodic checkpoints under manual optimization hold the weights *after*
# the batch's optimizer steps; that is exactly what M2GAN's checkpoints should hold.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


class M2GANCLI(LightningCLI):
    """LightningCLI that links data facts into the model and keeps logging failures non-fatal."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.resolution", "model.resolution")
        parser.link_arguments("data.max_length", "model.max_length")
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config["trainer"]
        if trainer.get("precision") is None:
            # bf16 autocast where the GPU supports it (no loss scaler needed); full precision elsewhere.
            use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            trainer["precision"] = "bf16-mixed" if use_bf16 else "32-true"

    def instantiate_classes(self) -> None:
        # Constructors validate their arguments; a bad value is a config error, not a crash.
        try:
            super().instantiate_classes()
            # Checked here, before Lightning launches the processes that would each fail on it.
            self.datamodule.batch_per_process(self.trainer.num_devices * self.trainer.num_nodes)
        except ValueError as error:
            print(f"error: invalid configuration: {error}", file=sys.stderr)
            sys.exit(2)

    def before_fit(self) -> None:
        """Resolve ``--ckpt_path last`` to the newest ``last.ckpt`` of any run in the same project folder.

        Each run writes into its own folder (``runs/<project>/<run id>``), so Lightning's own "last"
        would look only into the new, empty one and start from scratch.
        """
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        project = os.path.dirname(os.path.abspath(run_dir(self.trainer)))
        candidates = [
            os.path.join(project, run, "checkpoints", "last.ckpt")
            for run in (os.listdir(project) if os.path.isdir(project) else [])
        ]
        existing = [path for path in candidates if os.path.isfile(path)]
        if not existing:
            print(f"error: --ckpt_path last: no run under {project} has a last.ckpt to resume", file=sys.stderr)
            sys.exit(1)
        config["ckpt_path"] = max(existing, key=os.path.getmtime)
        print(f"resuming from {config['ckpt_path']}", file=sys.stderr)

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        logger = trainer.logger
        if isinstance(logger, WandbLogger):
            try:
                logger.experiment  # starts the W&B run now, so a failure shows before training
            except Exception as error:  # noqa: BLE001 - any W&B failure must not stop training
                fallback = CSVLogger(save_dir=logger.save_dir or "runs", name=str(logger.name or "m2gan"))
                warnings.warn(
                    f"W&B could not start ({type(error).__name__}: {error}); logging to CSV in {fallback.log_dir} instead",
                    stacklevel=1,
                )
                trainer.loggers = [fallback]
        return trainer


def main(default_config: str, args: list[str] | None = None) -> M2GANCLI | None:
    """Run the CLI with ``default_config`` as every subcommand's default config file."""
    if not (sys.argv[1:] if args is None else args):
        print(USAGE)
        return None
    from m2gan.data import CaptionDataModule
    from m2gan.model import M2GAN, CheckpointMismatch, DivergenceError

    defaults = {"default_config_files": [default_config]}
    try:
        return M2GANCLI(
            M2GAN,
            CaptionDataModule,
            save_config_callback=RunConfigSaver,
            parser_kwargs={sub: defaults for sub in ("fit", "validate", "test", "predict")},
            args=args,
        )
    except FileNotFoundError as error:  # e.g. --ckpt_path to a file that is not there
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except pickle.UnpicklingError as error:  # weights_only loading met objects it will not rebuild
        first_line = str(error).splitlines()[0]
        print(f"error: refused to load the checkpoint: it needs arbitrary unpickling ({first_line})", file=sys.stderr)
        sys.exit(1)
    except (CheckpointMismatch, DivergenceError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except RuntimeError as error:
        if "Error(s) in loading state_dict" not in str(error):
            raise
        first_line = str(error).splitlines()[0]
        print(
            "error: the checkpoint does not fit the configured model; it was trained with another config: pass "
            f"that run's config.yaml with --config ({first_line})",
            file=sys.stderr,
        )
        sys.exit(1)
