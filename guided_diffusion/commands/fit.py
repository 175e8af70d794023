"""``gd fit | validate | test | predict``: the LightningCLI of the training jobs.

    gd fit --config configs/mnist/diffusion.yaml
    gd fit --config configs/imagenet64/classifier.yaml --trainer.devices 8
    gd fit --config configs/mnist/ncsn.yaml                              # NCSN (score matching)
    gd fit --config configs/mnist/diffusion.yaml --ckpt_path last        # resume
    gd fit --config configs/mnist/diffusion.yaml --print_config           # the full, resolved config

The model is given by ``class_path`` (``DiffusionModule``, ``NoisyClassifierModule`` or ``NCSNModule``; their
constructor signatures are the schema), the data by ``ImageDataModule``'s arguments. The whole
resolved config is written next to the logs (``config.yaml``) and logged to every attached logger
(W&B shows it as the run config).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import yaml
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from ..data.datamodule import ImageDataModule
from ..training.base import TrainingModule
from ..training.diffusion_module import DiffusionModule  # noqa: F401  (registers the class for --model DiffusionModule)
from ..training.ncsn_module import NCSNModule  # noqa: F401  (registers the class for --model NCSNModule)
# NoisyClassifierModule is named by its full class_path (classifiers.module.NoisyClassifierModule), which
# jsonargparse imports itself: guided_diffusion never imports classifiers (docs/ARCHITECTURE.md).
from ..training.run_state import SafeCheckpointIO, logged_run_ids, resolve_checkpoint_path
from .command import one_line


class SaveConfigToLoggers(SaveConfigCallback):
    """Save ``config.yaml`` to the log dir, and log the resolved config to every logger (rank 0 only)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class GuidedDiffusionCLI(LightningCLI):
    """LightningCLI for ``DiffusionModule`` / ``NoisyClassifierModule`` / ``NCSNModule`` on ``ImageDataModule``."""

    def __init__(self, args=None, run: bool = True, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(model_class=TrainingModule, datamodule_class=ImageDataModule, subclass_mode_model=True,
                         save_config_callback=SaveConfigToLoggers, auto_configure_optimizers=False,
                         parser_kwargs={"description": "Train and evaluate guided-diffusion models with Lightning."},
                         args=args, run=run, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        """Refuse a constructor key that moved into an option group (one line naming the new key), then parse."""
        import sys

        refuse_renamed_options(sys.argv[1:] if args is None else args)
        subcommands = getattr(parser, "_subcommands_action", None)
        parsers = [parser, *(subcommands._name_parser_map.values() if subcommands is not None else ())]
        for each in parsers:  # a parse error becomes one line (ValueError) instead of a usage dump
            each.exit_on_error = False
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as error:
            raise ValueError(one_line(error)) from None

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` (one line naming what is wrong), then apply its hyper-parameters as Lightning does,
        with the flat keys of a flat-layout checkpoint moved into their option groups."""
        from pathlib import Path

        from ..torch_files import load_torch_file
        from ..training.base import migrate_hyperparameters

        self._resumed_run_ids: dict[str, str] = {}
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        trainer = config.get("trainer") or {}
        if subcommand == "fit" and (trainer.get("max_steps") == 0 or trainer.get("max_epochs") == 0):
            raise ValueError("--trainer.max_steps 0 (or max_epochs 0) trains nothing and saves nothing: give a "
                             "positive number (-1: no limit)")
        path = resolve_checkpoint_path(config.get("ckpt_path"), _checkpoint_dirs(trainer.get("callbacks")))
        if path is not None:
            self._resumed_run_ids = logged_run_ids(path)  # reads it safely (memory-mapped)
            if subcommand == "fit":  # resuming writes into the run's folder; validate / test / predict only read
                check_checkpoint_module(path, config.get("model"))
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():  # as Lightning: ``last`` etc. keep the config's model
            return
        checkpoint = load_torch_file(ckpt_path, "--ckpt_path checkpoint", mmap=True)
        hparams = migrate_hyperparameters(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except argparse.ArgumentError as error:
            raise ValueError(f"--ckpt_path {ckpt_path!r}: its hyper-parameters do not read as the model's "
                             f"({one_line(error)})") from None

    def before_instantiate_classes(self) -> None:
        """A resumed fit continues the same W&B run (the id its checkpoint recorded)."""
        run_id = getattr(self, "_resumed_run_ids", {}).get("wandb")
        if self.subcommand != "fit" or not run_id:
            return
        loggers = (self.config[self.subcommand].get("trainer") or {}).get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = _init_args(logger, "WandbLogger")
            if init_args is not None and not init_args.get("id"):
                init_args["id"] = run_id
                init_args["resume"] = "allow"  # passed on to wandb.init: continue that run

    def _check_data(self, stage: str) -> None:
        """Data that cannot be read, or that does not fit the network, ends the command before anything is written
        or started (the run's ``config.yaml``, a logger's run): the data module is set up now, not in the loop."""
        if self.datamodule is not None:
            self.datamodule.setup(stage)
            self.model.check_data(self.datamodule)

    def before_fit(self) -> None:
        self._check_data("fit")

    def before_validate(self) -> None:
        self._check_data("validate")

    def before_test(self) -> None:
        self._check_data("test")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, not a user's plugin
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer


def check_checkpoint_module(path, model: Any) -> None:
    """A ``--ckpt_path`` checkpoint must be of the module the config trains (before anything is written): resuming
    a diffusion run from a classifier's checkpoint would turn the run into a classifier writing into the diffusion
    run's folder."""
    from ..torch_files import load_torch_file

    expected = getattr(model, "class_path", None) or (model.get("class_path") if isinstance(model, dict) else None)
    hparams = load_torch_file(path, "--ckpt_path checkpoint", mmap=True).get("hyper_parameters") or {}
    found = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if not expected or not found:
        return
    module_name, _, class_name = expected.rpartition(".")
    trained = getattr(sys.modules.get(module_name), class_name, None)  # imported by the parser already
    names = {cls.__name__ for cls in trained.__mro__} if isinstance(trained, type) else {class_name}
    if found.rsplit(".", 1)[-1] not in names:  # the same class, re-exported or not, or one it derives from
        raise ValueError(f"--ckpt_path {str(path)!r} is a {found.rsplit('.', 1)[-1]} checkpoint but the config trains "
                         f"a {expected.rsplit('.', 1)[-1]} ({expected}): give a checkpoint of that run")


def refuse_renamed_options(args: Any) -> None:
    """Raise ``ValueError`` (one line: each old key and its new place) for a model key of the flat layout.

    Looks for the keys of :data:`~guided_diffusion.training.base.RENAMED_OPTIONS` (``ema_rate`` ->
    ``ema.rate``, ...) in ``--model.init_args.KEY`` arguments, in the ``model`` section of ``--config``
    files (also under a subcommand) and of ``--model`` files, and in a dict of arguments.
    """
    from collections.abc import Mapping
    from pathlib import Path

    from ..training.base import RENAMED_OPTIONS, is_renamed_option

    def is_file(value: str) -> bool:
        try:
            return Path(value).is_file()
        except (OSError, ValueError):
            return False

    def load(value: str) -> Any:
        try:
            return yaml.safe_load(Path(value).read_text() if is_file(value) else value)
        except (OSError, ValueError, yaml.YAMLError):
            return None  # the parser reports what is wrong with it

    def renamed_in_model(model: Any) -> list[str]:
        if not isinstance(model, Mapping):
            return []
        init_args = model.get("init_args") if isinstance(model.get("init_args"), Mapping) else {}
        return [key for key, value in [*model.items(), *init_args.items()] if is_renamed_option(key, value)]

    def renamed_in_config(config: Any) -> list[str]:
        if not isinstance(config, Mapping):
            return []
        sections = [config, *(value for value in config.values() if isinstance(value, Mapping))]  # + subcommands
        return [key for section in sections for key in renamed_in_model(section.get("model"))]

    found: list[tuple[str, str]] = []  # (old key, the file it is in or "")
    if hasattr(args, "as_dict"):  # a jsonargparse Namespace
        args = args.as_dict()
    if isinstance(args, Mapping):
        found += [(key, "") for key in renamed_in_config(args)]
    else:
        args = [str(arg) for arg in args or ()]
        for i, arg in enumerate(args):
            name, equals, value = arg.partition("=")
            if not equals:
                value = args[i + 1] if i + 1 < len(args) else ""
            if name in ("-c", "--config"):
                found += [(key, value if is_file(value) else "") for key in renamed_in_config(load(value))]
            elif name == "--model":
                found += [(key, value if is_file(value) else "") for key in renamed_in_model(load(value))]
            elif name.startswith("--model."):
                key = name[len("--model."):].removeprefix("init_args.")
                if is_renamed_option(key, load(value)):
                    found.append((key, ""))
    if found:
        keys, files = dict.fromkeys(key for key, _ in found), dict.fromkeys(where for _, where in found if where)
        raise ValueError("; ".join(f"model.init_args.{key} was renamed: use model.init_args.{RENAMED_OPTIONS[key]}"
                                   for key in keys) + (f" (in {', '.join(files)})" if files else ""))


def _init_args(component: Any, class_name: str):
    """The ``init_args`` of a parsed ``class_path`` component of class ``class_name``, else ``None``."""
    class_path = getattr(component, "class_path", None) or (component.get("class_path") if isinstance(component, dict)
                                                            else None)
    if not class_path or class_path.rsplit(".", 1)[-1] != class_name:
        return None
    return component["init_args"]


def _checkpoint_dirs(callbacks: Any) -> list[str]:
    dirs = []
    for callback in callbacks or []:
        for name in ("RunCheckpoint", "ModelCheckpoint"):
            init_args = _init_args(callback, name)
            if init_args is not None and init_args.get("dirpath"):
                dirs.append(str(init_args["dirpath"]))
    return dirs


class _RecipeCLI(GuidedDiffusionCLI):
    """Parses and instantiates a config's model and data exactly as ``gd fit`` would, without a Trainer."""

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")


#: Trainer settings of a config that belong to the recipe (how to train), not to where a run writes.
RECIPE_TRAINER_KEYS = ("max_steps", "precision", "gradient_clip_val", "gradient_clip_algorithm",
                       "accumulate_grad_batches")


def load_recipe(config: str, overrides: Sequence[str] = ()) -> tuple[TrainingModule, ImageDataModule, dict]:
    """The model, data module and recipe trainer settings (:data:`RECIPE_TRAINER_KEYS`) of a ``gd fit`` config.

    ``overrides`` are ``gd fit`` command-line arguments (``["--trainer.max_steps=800",
    "--model.init_args.lr=2e-3"]``); the config goes through the CLI's own parser, so the recipe a
    program trains is the one ``gd fit --config CONFIG`` trains.
    """
    cli = _RecipeCLI(args=["--config", str(config), *overrides], run=False)
    trainer = cli.config.get("trainer", {})
    settings = {key: trainer.get(key) for key in RECIPE_TRAINER_KEYS if trainer.get(key) is not None}
    return cli.model, cli.datamodule, settings


def lightning_main(args: list[str] | None = None) -> GuidedDiffusionCLI:
    """Run ``gd fit|validate|test|predict ...`` (``args`` includes the subcommand)."""
    return GuidedDiffusionCLI(args=args)
