"""Training callbacks: a grid of EMA samples logged every N steps and at every validation."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid, save_image


class SampleGridCallback(Callback):
    """Sample from the EMA weights every ``every_n_steps`` steps and log the image grid.

    Class-conditional models get one row per class (the first ``max_classes`` classes), with
    ``samples_per_class`` columns; unconditional ones a square-ish grid of ``num_samples``. The
    noise is the same at every log (fixed ``seed``), so grids show how the same samples evolve.
    The grid goes to W&B (``WandbLogger``) or TensorBoard if one is attached, and always to
    ``<default_root_dir>/samples/step_<step>.png``. Only rank 0 samples.

    Args:
        every_n_steps: log every this many optimizer steps (0 = only at the end of training).
        samples_per_class: columns of the grid of a class-conditional model.
        max_classes: rows (classes) of the grid of a class-conditional model.
        num_samples: images of the grid of an unconditional model.
        sampler: sampler name (``"ddim"``, ``"ddpm"``, ``"dpm-solver"``).
        steps: respacing of the sampler (a fast one, e.g. ``"ddim25"``).
        seed: seed of the sampling noise.
        at_train_end: also log a grid when training ends.
        weights: ``"ema"`` (the averaged weights validation uses) or ``"raw"`` (the training
            weights); the caption names them (e.g. the EMA schedule and its update count).
        at_validation: also log a grid after every validation run in training (not the sanity check), so the
            grid sits beside the validation losses of the same step (once per step: a step that already
            logged one is not sampled again).
    """

    def __init__(self, every_n_steps: int = 1000, samples_per_class: int = 8, max_classes: int = 10,
                 num_samples: int = 64, sampler: str = "ddim", steps: str = "ddim25", seed: int = 0,
                 at_train_end: bool = True, weights: Literal["ema", "raw"] = "ema", at_validation: bool = True):
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
        self.weights = weights
        if every_n_steps < 0 or samples_per_class < 1 or max_classes < 1 or num_samples < 1:
            raise ValueError("every_n_steps must be >= 0 and the grid sizes >= 1")
        self.every_n_steps, self.samples_per_class, self.max_classes = every_n_steps, samples_per_class, max_classes
        self.num_samples, self.sampler, self.steps, self.seed = num_samples, sampler, steps, seed
        self.at_train_end, self.at_validation = at_train_end, at_validation
        self._last_step: Optional[int] = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.log_samples(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if self.at_validation and fitting and trainer.global_step != self._last_step:
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_train_end and trainer.global_step != self._last_step:
            self.log_samples(trainer, pl_module)

    def grid_labels(self, pl_module: LightningModule) -> tuple[Optional[torch.Tensor], int]:
        """(labels or None, images per grid row)."""
        num_classes = getattr(pl_module, "num_classes", None)
        if num_classes is None:
            columns = max(int(self.num_samples ** 0.5), 1)
            return None, columns
        classes = torch.arange(min(num_classes, self.max_classes), device=pl_module.device)
        return classes.repeat_interleave(self.samples_per_class), self.samples_per_class

    @torch.no_grad()
    def log_samples(self, trainer: Trainer, pl_module: LightningModule) -> Optional[Path]:
        self._last_step = step = trainer.global_step
        if not trainer.is_global_zero:
            return None
        if not hasattr(pl_module, "sample"):
            raise TypeError(f"SampleGridCallback needs a module with a sample() method, got {type(pl_module).__name__}")
        labels, columns = self.grid_labels(pl_module)
        count = len(labels) if labels is not None else self.num_samples
        generator = torch.Generator(pl_module.device).manual_seed(self.seed)
        with trainer.precision_plugin.forward_context():
            images = pl_module.sample(count, labels, sampler=self.sampler, steps=self.steps, generator=generator,
                                      weights=self.weights)
        grid = make_grid(images.float().cpu().add(1).div(2).clamp(0, 1), nrow=columns, padding=2)
        path = Path(trainer.default_root_dir) / "samples" / f"step_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        describe = getattr(pl_module, "describe_weights", None)
        which = describe(self.weights) if describe else self.weights
        caption = f"samples at step {step} ({self.sampler}, {self.steps}; {which})"
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"samples/{self.weights}", images=[grid], step=step, caption=[caption])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"samples/{self.weights}", grid, step)
        return path
