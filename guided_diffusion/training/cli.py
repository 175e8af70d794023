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

from typing import Sequence

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from ..data.datamodule import ImageDataModule
from .base import TrainingModule
from .diffusion_module import DiffusionModule  # noqa: F401  (registers the class for --model DiffusionModule)
from .ncsn_module import NCSNModule  # noqa: F401  (registers the class for --model NCSNModule)


class SaveConfigToLoggers(SaveConfigCallback):
    """Save ``config.yaml`` to the log dir, and log the resolved config to every logger (rank 0 only)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class GuidedDiffusionCLI(LightningCLI):
    """LightningCLI for ``DiffusionModule`` / ``NoisyClassifierModule`` / ``NCSNModule`` on ``ImageDataModule``."""

    def __init__(self, args=None, run: bool = True, **kwargs):
        import classifiers.module  # noqa: F401  (registers NoisyClassifierModule)

        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(model_class=TrainingModule, datamodule_class=ImageDataModule, subclass_mode_model=True,
                         save_config_callback=SaveConfigToLoggers, auto_configure_optimizers=False,
                         parser_kwargs={"description": "Train and evaluate guided-diffusion models with Lightning."},
                         args=args, run=run, **kwargs)


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
