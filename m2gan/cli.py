"""LightningCLI for M2GAN: config links, device-aware precision, a logger that never stops training."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import warnings

import torch
import yaml
from jsonargparse import DefaultHelpFormatter
from lightning_fabric.utilities.exceptions import MisconfigurationException
from lightning_fabric.utilities.rank_zero import rank_zero_only
from lightning_utilities.core import rank_zero
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.callbacks.progress import ProgressBar, RichProgressBar
from pytorch_lightning.callbacks.progress.rich_progress import _RICH_AVAILABLE
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch.utils.data import IterableDataset

from m2gan.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointMismatch,
    TextSourceError,
    read_checkpoint,
)
from m2gan.loggers import AutoWandbLogger, last_logged_step, run_dir

USAGE = """\
M2GAN: text-to-image GAN training with LightningCLI.

  python train.py fit                      train the default job (configs/default.yaml, built-in shapes data)
  python train.py fit --config FILE.yaml   train with your own config (merged over the default)
  python train.py fit --print_config=comments   show the complete config, each option with its help
  python train.py {validate,test,predict} --ckpt_path CKPT
  python train.py --help                   all options
"""


class RunConfigSaver(SaveConfigCallback):
    """Save the resolved config as ``config.yaml`` in this run's own folder.

    LightningCLI's default writes to ``trainer.log_dir``, which a ``WandbLogger`` shares between all
    runs of a folder, so the second run would fail; a run folder is unique per run. A resumed run
    writing into its folder again keeps the earlier config and adds ``config.1.yaml``, ….
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer, pl_module, stage: str) -> None:
        folder = run_dir(trainer)
        os.makedirs(folder, exist_ok=True)
        # A resumed run continues in its folder: the first part's config stays, the next is config.1.yaml, ...
        stem, suffix = os.path.splitext(self.config_filename)
        path, part = os.path.join(folder, self.config_filename), 0
        while os.path.exists(path):
            part += 1
            path = os.path.join(folder, f"{stem}.{part}{suffix}")
        self.parser.save(
            self.config,
            path,
            skip_none=False,
            overwrite=True,
            multifile=self.multifile,
        )


class OneLineParser(LightningArgumentParser):
    """A parser whose errors are one line: the key and the reason, without the usage of every option."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        if "Errors:" in lines:  # a value that fits none of a Union's types, reported per type: keep the first
            end = at = lines.index("Errors:") + 1
            while end < len(lines) - 1 and lines[end].endswith(":"):  # "key:" lines lead to the reason
                end += 1
            shown = " ".join([lines[0], *lines[at : end + 1]]).replace("- ", "", 1)
        else:
            shown = " ".join(lines[:2])
        fail(f"{shown} ({self.prog.replace(' [options]', '')} --help lists the options)", 2)


class CallbackNamesHelp(DefaultHelpFormatter):
    """``--help`` that shows a default list of callbacks by their class names, not as nested Namespaces."""

    def _expand_help(self, action) -> str:
        text = super()._expand_help(action)
        while (start := text.find("Namespace(class_path='")) >= 0:
            depth, end = 0, start + len("Namespace")
            while True:  # to the Namespace's closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0 or end == len(text) - 1:
                    break
                end += 1
            name = text[start:].split("'", 2)[1]
            text = text[:start] + name + text[end + 1 :]
        return text


class RunProgressBar(RichProgressBar):
    """Lightning's rich progress bar, which reads "Epoch 4/-2" when the epochs are not capped (``max_epochs: -1``)."""

    def _get_train_description(self, current_epoch: int) -> str:
        if (self.trainer.max_epochs or 0) >= 0:
            return super()._get_train_description(current_epoch)
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"


FP16_PRECISIONS = {"16", "16-mixed", "16-true"}
LIGHTNING_CHECKPOINT_NAMES = {"best", "last", "hpc", "registry"}
STARTED_RUNS: list = []
"""Trainers of this process's CLI runs, so that a failed run's empty folder and W&B run can be removed."""


def fail(message: str, status: int = 1) -> None:
    """End the command with ``error: message`` on one line and exit ``status`` (2: a configuration error)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def discard_failed_runs() -> None:
    """Remove what a run that failed before training or writing anything left behind.

    A run folder holding nothing but its ``config.yaml`` goes, with the run's W&B files if it was
    offline (an online run is marked failed: W&B keeps its own record). A run that trained a batch
    (stopped later, e.g. by the collapse alarm or the divergence guard) or wrote anything else is
    kept with its W&B run: they hold the evidence of what went wrong.
    """
    while STARTED_RUNS:
        trainer = STARTED_RUNS.pop()
        folder = run_dir(trainer)
        files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names] if os.path.isdir(folder) else []
        if trainer.global_step > 0 or any(os.path.basename(f) != "config.yaml" for f in files):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        logger = trainer.logger
        if isinstance(logger, WandbLogger):  # started by instantiate_trainer (else it fell back to CSV)
            run = logger.experiment
            offline = run.settings.mode == "offline" or run.offline
            run_files = os.path.dirname(run.dir)  # wandb/offline-run-…/files -> wandb/offline-run-…
            run.finish(exit_code=1)
            if offline:
                shutil.rmtree(run_files, ignore_errors=True)


def quiet_known_noise() -> None:
    """Filter lines printed on every run that are not the user's business (warnings about the user's own setup stay)."""
    # Lightning warns that periodic checkpoints under manual optimization hold the weights *after*
    # the batch's optimizer steps; that is exactly what M2GAN's checkpoints should hold.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    # Lightning's own use of a torch API it has yet to update.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # main() passes its (upgraded) arguments besides sys.argv by design.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")


class _NotOurs(logging.Filter):
    """Drops Lightning's advertisement for its own cloud logger, printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


rank_zero.log.addFilter(_NotOurs())


class M2GANCLI(LightningCLI):
    """LightningCLI that links data facts into the model and keeps logging failures non-fatal.

    Args:
        named_callbacks: Callbacks every run has, each configured under its own top-level key
            (``{"collapse": CollapseAlarm}``: ``--collapse.stop true``, or ``collapse:`` in YAML).
    """

    def __init__(self, *args, named_callbacks: dict[str, type] | None = None, **kwargs) -> None:
        self.named_callbacks = dict(named_callbacks or {})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.resolution", "model.resolution")
        parser.link_arguments("data.max_length", "model.max_length")
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        for key, callback in self.named_callbacks.items():
            parser.add_lightning_class_args(callback, key)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config["trainer"]
        for entry in trainer.get("callbacks") or []:
            class_path = str(getattr(entry, "class_path", ""))
            for key, callback in self.named_callbacks.items():
                if class_path.rsplit(".", 1)[-1] == callback.__name__:
                    fail(
                        f"invalid configuration: trainer.callbacks lists {class_path}, which every run has already: "
                        f"configure it under {key}: instead (e.g. --{key}.<option> VALUE) and remove it from "
                        "trainer.callbacks",
                        2,
                    )
        if trainer.get("precision") is None:
            # bf16 autocast where the GPU supports it (no loss scaler needed); full precision elsewhere.
            use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            trainer["precision"] = "bf16-mixed" if use_bf16 else "32-true"
        max_time = trainer.get("max_time")
        if isinstance(max_time, str) and not re.fullmatch(r"\d+:\d\d:\d\d:\d\d", max_time.strip()):
            fail(
                f"invalid configuration: trainer.max_time {max_time!r} is not DD:HH:MM:SS (00:00:10:00 is ten minutes)",
                2,
            )
        if str(trainer["precision"]) in FP16_PRECISIONS:
            # fp16 needs a loss scaler that backs off after an overflow; the divergence guard would
            # skip those steps first, so the scale would never shrink and training would stop.
            fail(
                f"invalid configuration: trainer.precision {trainer['precision']} is not supported (the divergence "
                "guard and fp16's loss scaler do not mix); use bf16-mixed or 32-true",
                2,
            )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads --ckpt_path's settings next, with torch.load: refuse a bad file first.
        config = self.config.get(self.config.get("subcommand") or "", {}) or {}
        path = config.get("ckpt_path") if hasattr(config, "get") else None
        if path and os.path.isfile(path):
            try:
                read_checkpoint(path)
            except CheckpointError as error:
                fail(f"--ckpt_path {error}")

    def instantiate_classes(self) -> None:
        # Constructors validate their arguments; a bad value is a config error, not a crash.
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as error:
            fail(f"invalid configuration: {error}", 2)

    def before_fit(self) -> None:
        if rank_zero_only.rank == 0 and not any(isinstance(c, ModelSummary) for c in self.trainer.callbacks):
            print(f"model: {parameter_summary(self.model)}", file=sys.stderr)

    def after_fit(self) -> None:
        if self.trainer.global_step == 0 and not self.trainer.interrupted:
            fail("training ran no batch: the data held nothing to train on")

    def check_checkpoint(self) -> None:
        """Refuse ``--ckpt_path`` before any work when it is unreadable or does not fit the model and data."""
        path = self.config_init[self.subcommand].get("ckpt_path")
        if path is None or path in LIGHTNING_CHECKPOINT_NAMES:
            return
        try:
            self.model.check_checkpoint(path, getattr(self.datamodule, "tokenizer", None))
        except TextSourceError as error:
            fail(f"--ckpt_path {error.with_hint('--model.text.text_encoder FOLDER')}")
        except (CheckpointError, FileNotFoundError) as error:
            fail(f"--ckpt_path {error}")

    def check_training_data(self, trainer) -> None:
        """Refuse data that gives no training batch; fit ``val_check_interval`` to a short epoch.

        The default config validates every 1,000 batches; Lightning refuses an interval longer than
        the epoch, which a smaller dataset has, and only after minutes of setup.
        """
        datamodule = self.datamodule
        train = datamodule.datasets["train"]
        if isinstance(train, IterableDataset):  # streamed shards: no length to check
            return
        batch_size = datamodule.hparams.batch_size
        batches = len(train) // batch_size
        if batches == 0:
            fail(
                f"data: the training split holds {len(train)} images, fewer than one batch of data.batch_size "
                f"{batch_size}: nothing would be trained; lower data.batch_size or add images"
            )
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))
        interval = trainer.val_check_interval
        if isinstance(interval, int) and interval > batches and trainer.check_val_every_n_epoch is not None:
            print(
                f"note: trainer.val_check_interval {interval} is longer than an epoch ({batches} batches): "
                "validating at the end of every epoch instead",
                file=sys.stderr,
            )
            trainer.val_check_interval = 1.0

    def resolve_last_checkpoint(self, trainer) -> None:
        """Resolve ``--ckpt_path last`` to the newest ``last.ckpt`` of any run in the same project folder.

        Each run writes into its own folder (``runs/<project>/<run id>``), so Lightning's own "last"
        would look only into the new, empty one and start from scratch.
        """
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        project = os.path.dirname(os.path.abspath(run_dir(trainer)))
        candidates = [
            os.path.join(project, run, "checkpoints", "last.ckpt")
            for run in (os.listdir(project) if os.path.isdir(project) else [])
        ]
        existing = [path for path in candidates if os.path.isfile(path)]
        if not existing:
            fail(f"--ckpt_path last: no run under {project} has a last.ckpt to resume")
        config["ckpt_path"] = max(existing, key=os.path.getmtime)
        print(f"resuming from {config['ckpt_path']}", file=sys.stderr)

    def continue_logged_run(self, logger: AutoWandbLogger) -> None:
        """Let a resumed fit log into the W&B run (and run folder) its checkpoint came from.

        Only when the checkpoint lies in ``<save_dir>/<project>/<run id>/checkpoints`` of this
        logger's project and is not older than the last batch that run logged: resuming from an
        earlier checkpoint would log those batches a second time, so it starts a new run instead.
        """
        path = self.config_init[self.subcommand].get("ckpt_path")
        if not path or not os.path.isfile(path) or not logger.continue_run or logger.version is not None:
            return
        checkpoints = os.path.dirname(os.path.abspath(path))
        run_folder = os.path.dirname(checkpoints)
        project = os.path.abspath(os.path.join(logger.save_dir, str(logger.name)))
        if os.path.basename(checkpoints) != "checkpoints" or os.path.dirname(run_folder) != project:
            return
        batches = int(read_checkpoint(path).get("state_dict", {}).get("d_steps", 0))
        run_id, logged = os.path.basename(run_folder), last_logged_step(run_folder)
        if batches < logged:
            print(
                f"note: {path} is from batch {batches} but W&B run {run_id} logged up to batch {logged}: "
                "starting a new W&B run so that no batch is logged twice",
                file=sys.stderr,
            )
            return
        logger.continue_logged_run(run_id)
        print(f"continuing W&B run {run_id} from batch {batches}", file=sys.stderr)

    def _instantiate_trainer(self, config: dict, callbacks: list):
        listed = config.get("callbacks") or []
        if config.get("enable_progress_bar") is not False and _RICH_AVAILABLE and not any(
            isinstance(c, ProgressBar) for c in [*listed, *callbacks]
        ):
            callbacks = [*callbacks, RunProgressBar()]  # instead of Lightning's own default
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_trainer(self, **kwargs):
        if rank_zero_only.rank == 0:  # settings that do nothing under the others: said once, before any work
            for line in self.model.settings.ignored() + self.datamodule.ignored_settings():
                print(f"warning: {line}", file=sys.stderr)
        trainer = super().instantiate_trainer(**kwargs)
        # Every check that can refuse the run comes before W&B starts and the run folder is made.
        try:  # checked here, before Lightning launches the processes that would each fail on it
            self.datamodule.batch_per_process(trainer.num_devices * trainer.num_nodes)
        except ValueError as error:
            fail(f"invalid configuration: {error}", 2)
        if self.subcommand == "fit":
            self.resolve_last_checkpoint(trainer)
        self.check_checkpoint()
        if self.subcommand == "fit":
            self.check_training_data(trainer)
            if isinstance(trainer.logger, AutoWandbLogger):
                self.continue_logged_run(trainer.logger)
        STARTED_RUNS.append(trainer)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        logger = trainer.logger
        if isinstance(logger, WandbLogger):
            try:
                _ = logger.experiment  # starts the W&B run now, so a failure shows before training
            except Exception as error:  # noqa: BLE001 - any W&B failure must not stop training
                fallback = CSVLogger(save_dir=logger.save_dir or "runs", name=str(logger.name or "m2gan"))
                warnings.warn(
                    f"W&B could not start ({type(error).__name__}: {error}); logging to CSV in {fallback.log_dir} instead",
                    stacklevel=1,
                )
                trainer.loggers = [fallback]
        return trainer


def parameter_summary(model) -> str:
    """Each network's parameter count, in one line (Lightning's summary table counts FLOPs it cannot measure here)."""
    parts = {"text encoder": model.text_encoder, "generator": model.generator, "discriminator": model.discriminator,
             "captioner": model.captioner, "EMA copies": model.ema}  # fmt: skip
    if getattr(model, "region_teacher", None) is not None:
        parts["region teacher"] = model.region_teacher
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    return ", ".join(f"{name} {count / 1e6:.2f} M" for name, count in counts.items()) + " parameters"


def upgraded_arguments(args: list[str], config_files: list[str]) -> list[str]:
    """``args`` with an earlier version's flat ``--model.<name>`` keys as today's nested ones (a note each).

    A config file with flat model keys is refused in one line naming the new key: a file is the
    user's to edit, and silently reading it differently than it says would hide the change.
    """
    from m2gan.settings import new_key

    for path in config_files:
        try:
            with open(path) as file:
                config = yaml.safe_load(file)
        except (OSError, yaml.YAMLError):
            continue  # LightningCLI reports an unreadable file itself
        model = config.get("model") if isinstance(config, dict) else None
        moved = [name for name in model if new_key(name)] if isinstance(model, dict) else []
        if moved:
            fail(f"{path}: model.{moved[0]} is now {new_key(moved[0])} (model settings are grouped: text, "
                 "generator, discriminator, captioner, objective, training; configs/default.yaml shows the layout)",
                 2)  # fmt: skip
    upgraded = []
    for arg in args:
        key, sep, value = arg.partition("=")
        name = key.removeprefix("--model.")
        if key.startswith("--model.") and new_key(name):
            print(f"note: --model.{name} is now --{new_key(name)}", file=sys.stderr)
            arg = f"--{new_key(name)}{sep}{value}"
        upgraded.append(arg)
    return upgraded


def config_files(default_config: str, args: list[str]) -> list[str]:
    """The config files a command line reads: the default one and every ``--config FILE``."""
    files = [default_config]
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.removeprefix("--config="))
    return files


def main(
    default_config: str, args: list[str] | None = None, named_callbacks: dict[str, type] | None = None
) -> M2GANCLI | None:
    """Run the CLI with ``default_config`` as every subcommand's default config file.

    Args:
        named_callbacks: Callbacks every run has, each tuned under its own key (see :class:`M2GANCLI`).
    """
    args = sys.argv[1:] if args is None else list(args)
    if not args:
        print(USAGE)
        return None
    args = upgraded_arguments(args, config_files(default_config, args))
    quiet_known_noise()
    from m2gan.data import CaptionDataModule
    from m2gan.model import M2GAN, CollapseError, DivergenceError

    defaults = {"default_config_files": [default_config]}
    STARTED_RUNS.clear()
    try:
        try:
            cli = M2GANCLI(
                M2GAN,
                CaptionDataModule,
                save_config_callback=RunConfigSaver,
                parser_class=OneLineParser,
                # formatter_class: the subcommands' parsers take the main parser's
                parser_kwargs={**dict.fromkeys(("fit", "validate", "test", "predict"), defaults),
                               "formatter_class": CallbackNamesHelp},  # fmt: skip
                args=args,
                named_callbacks=named_callbacks,
            )
        except BaseException as error:
            if not (isinstance(error, SystemExit) and error.code in (0, None)):
                discard_failed_runs()
            raise
        STARTED_RUNS.clear()
        return cli
    except (FileNotFoundError, CheckpointMismatch, DivergenceError, CollapseError) as error:
        fail(str(error))
