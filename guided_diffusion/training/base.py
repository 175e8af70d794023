"""What the two training jobs share: AdamW with warm-up and linear anneal, skipping non-finite
steps, gradient/parameter norm and lr logging, per-rank randomness, all-gathering per-example
statistics, and the early data/network consistency check.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from .loss_stats import quartile_means
from .lr_schedule import LrSchedule, build_lr_scheduler


#: Validation, test and predict noise is seeded from this, the batch index and the rank, so that
#: evaluation numbers are comparable across epochs and runs.
VALIDATION_SEED = 2021


class TrainingModule(LightningModule):
    """Base of :class:`DiffusionModule` and ``NoisyClassifierModule``; subclasses set ``self.model``.

    Non-finite losses: the decision is made from the losses all-gathered from every rank, so all
    ranks agree. The backward pass still runs (DDP's gradient all-reduce must happen on every
    rank), then the gradients are dropped before the optimizer step, so the weights, the optimizer
    state and the EMA are untouched; the step is counted (``train/nonfinite_steps``), and
    ``max_consecutive_nonfinite`` skipped steps in a row stop training with an error naming them.

    Args:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_warmup_steps: linear LR warm-up steps (0 = none).
        lr_anneal_steps: decay the LR to 0 at this step (0 = constant); see :func:`build_lr_scheduler`.
        max_consecutive_nonfinite: raise after this many consecutive non-finite losses.
        lr_schedule: shape of the decay, ``"linear"`` (ADM) or ``"cosine"``.
    """

    model: nn.Module

    def __init__(self, lr: float, weight_decay: float, lr_warmup_steps: int, lr_anneal_steps: int,
                 max_consecutive_nonfinite: int, lr_schedule: LrSchedule = "linear"):
        super().__init__()
        if lr <= 0 or weight_decay < 0 or lr_warmup_steps < 0 or lr_anneal_steps < 0:
            raise ValueError(f"need lr > 0 and non-negative weight_decay, lr_warmup_steps, lr_anneal_steps; got "
                             f"{lr}, {weight_decay}, {lr_warmup_steps}, {lr_anneal_steps}")
        if max_consecutive_nonfinite < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {max_consecutive_nonfinite}")
        self.lr, self.weight_decay = lr, weight_decay
        self.lr_warmup_steps, self.lr_anneal_steps = lr_warmup_steps, lr_anneal_steps
        if lr_schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose 'linear' or 'cosine'")
        if lr_anneal_steps and lr_anneal_steps <= lr_warmup_steps:
            raise ValueError(f"lr_anneal_steps ({lr_anneal_steps}) must exceed lr_warmup_steps ({lr_warmup_steps})")
        self.lr_schedule = lr_schedule
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.nonfinite_steps = 0
        self.consecutive_nonfinite = 0
        self._skip_step = False
        self._generators: dict[str, torch.Generator] = {}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = build_lr_scheduler(optimizer, self.lr_warmup_steps, self.lr_anneal_steps, self.lr_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._skip_step:
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without gradients alone
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        params = [p.detach() for p in self.model.parameters()]
        self.log("train/grad_norm", _total_norm(grads))
        self.log("train/param_norm", _total_norm(params))
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if not self._skip_step:
            self.on_weights_updated()
        self._skip_step = False

    def describe_weights(self, weights: Literal["ema", "raw"] = "ema") -> str:
        """Which weights ``weights`` names, for captions and logs (the EMA's schedule and update count)."""
        ema = getattr(self, "ema", None)
        if weights == "ema" and ema is not None:
            return ema.describe()
        return f"raw weights after {self.global_step} steps"

    def on_weights_updated(self) -> None:
        """Called after every optimizer step that changed the weights (the EMA update)."""

    def check_finite(self, losses: torch.Tensor) -> None:
        """Mark this step to be skipped when any of ``losses`` (gathered from all ranks) is non-finite."""
        if bool(torch.isfinite(losses).all()):
            self.consecutive_nonfinite = 0
        else:
            self._skip_step = True
            self.nonfinite_steps += 1
            self.consecutive_nonfinite += 1
            first = self.global_step - self.consecutive_nonfinite + 1
            if self.consecutive_nonfinite >= self.max_consecutive_nonfinite:
                raise FloatingPointError(
                    f"training stopped at step {self.global_step}: the loss was non-finite in "
                    f"{self.consecutive_nonfinite} consecutive steps ({first}..{self.global_step}); those updates "
                    "were skipped, so the weights (and the EMA) are still finite. Lower the learning rate, enable "
                    "gradient clipping (trainer.gradient_clip_val) or use bf16-mixed instead of 16-mixed.")
            rank_zero_warn(f"non-finite loss at step {self.global_step}: optimizer step skipped "
                           f"({self.nonfinite_steps} skipped so far)")
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))

    # ------------------------------------------------------------------ distributed helpers
    def generator(self, device: torch.device) -> torch.Generator:
        """A generator for this rank's timesteps, noise and label dropout.

        ``seed_everything`` gives every rank the same global RNG, which would draw the same t and
        noise on every rank; this one is seeded by (seed, rank, step at creation).
        """
        key = str(device)
        if key not in self._generators:
            seed = hash((torch.initial_seed(), self.global_rank, self.global_step)) % 2**63
            self._generators[key] = torch.Generator(device).manual_seed(seed)
        return self._generators[key]

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_generators"] = {}  # generators do not survive ddp_spawn's pickling; they are re-created
        return state

    def gather_examples(self, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-example values of the whole (all-rank) batch, in rank order: identical on every rank."""
        stacked = torch.stack([v.detach().float() for v in values], dim=1)
        gathered = self.all_gather(stacked)
        return tuple(gathered.reshape(-1, len(values)).unbind(dim=1))

    def log_training_losses(self, t: torch.Tensor, losses: dict[str, torch.Tensor], num_timesteps: int,
                            progress_bar: tuple[str, ...] = ("loss",)) -> None:
        """Log ``train/<term>`` overall and per timestep quartile; the overall ``progress_bar`` terms on the bar."""
        stats = quartile_means(t, losses, num_timesteps)
        for name in progress_bar:
            self.log(f"train/{name}", stats.pop(name), prog_bar=True)
        self.log_dict({f"train/{name}": value for name, value in stats.items()})

    def on_train_start(self) -> None:
        self._generators.clear()  # re-seed with the (possibly resumed) global step

    # ------------------------------------------------------------------ checks
    def check_data(self, image_size: int, in_channels: int, num_classes: Optional[int]) -> None:
        """Raise before training when the datamodule's images or classes do not fit the network."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        data_size, data_channels = getattr(datamodule, "image_size", None), getattr(datamodule, "channels", None)
        if data_size is not None and data_size != image_size:
            raise ValueError(f"the data has {data_size}x{data_size} images but the network was built for "
                             f"image_size={image_size}: set data.image_size or the network's image_size")
        if data_channels is not None and data_channels != in_channels:
            raise ValueError(f"the data has {data_channels}-channel images but the network takes in_channels="
                             f"{in_channels}")
        data_classes = getattr(datamodule, "num_classes", None)
        if num_classes is not None and data_classes is not None and data_classes != num_classes:
            raise ValueError(f"the data has {data_classes} classes but the network was built for "
                             f"num_classes={num_classes}")

    # ------------------------------------------------------------------ validation / test
    # Subclasses set ``self.eval_metrics`` (reset / update / compute) and implement ``_evaluate``.
    def evaluation_generator(self, device: torch.device, batch_idx: int) -> torch.Generator:
        """The seeded generator of evaluation batch ``batch_idx`` on this rank."""
        return torch.Generator(device).manual_seed(
            VALIDATION_SEED + batch_idx * self.trainer.world_size + self.global_rank)

    def _evaluate(self, batch, batch_idx: int) -> None:
        raise NotImplementedError

    def _log_evaluation(self, prefix: str) -> None:
        results = self.eval_metrics.compute()
        self.eval_metrics.reset()
        self.log_dict({f"{prefix}/{name}": value for name, value in results.items()}, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self.eval_metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self.eval_metrics.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nonfinite_steps"] = self.nonfinite_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite_steps = int(checkpoint.get("nonfinite_steps", 0))


def _total_norm(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    norms = torch._foreach_norm([t.float() for t in tensors])
    return float(torch.linalg.vector_norm(torch.stack(norms)))
