"""What the two training jobs share: AdamW with warm-up and linear anneal, skipping non-finite
steps, gradient/parameter norm and lr logging, per-rank randomness, all-gathering per-example
statistics, the early data/network consistency check, and the constructor keys that moved into
option groups (:data:`RENAMED_OPTIONS`, :func:`migrate_hyperparameters` for checkpoints of the flat layout).
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ..nets.fast_paths import apply_fast_paths
from .loss_stats import quartile_means
from .lr_schedule import LrSchedule, build_lr_scheduler
from .skipped_steps import SkippedSteps, scaler_found_inf


#: Validation, test and predict noise is seeded from this, the batch index and the rank, so that
#: evaluation numbers are comparable across epochs and runs.
VALIDATION_SEED = 2021

#: Constructor arguments of the flat layout that are fields of an option group: ``model.init_args.<old>`` is
#: ``model.init_args.<new>`` (the EMA: :class:`~.ema.EmaOptions`; the weighting of the MSE term:
#: :class:`~guided_diffusion.diffusion.weighting.LossWeighting`). ``loss_weighting`` keeps its name
#: as the group: only its value as a string (the kind) is the old form.
RENAMED_OPTIONS: dict[str, str] = {
    "ema_rate": "ema.rate",
    "ema_warmup": "ema.warmup",
    "ema_schedule": "ema.schedule",
    "ema_power_gamma": "ema.power_gamma",
    "loss_weighting": "loss_weighting.kind",
    "min_snr_gamma": "loss_weighting.min_snr_gamma",
    "min_snr_floor": "loss_weighting.min_snr_floor",
    "p2_gamma": "loss_weighting.p2_gamma",
    "p2_k": "loss_weighting.p2_k",
}


def is_renamed_option(key: str, value: Any) -> bool:
    """Whether ``key: value`` among a module's constructor arguments is in the old flat form of
    :data:`RENAMED_OPTIONS` (a group's own name, ``loss_weighting``, is old unless its value is a mapping)."""
    new = RENAMED_OPTIONS.get(key)
    return new is not None and not (new.split(".")[0] == key and isinstance(value, Mapping))


def migrate_hyperparameters(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` (a checkpoint's ``hyper_parameters``) with the old flat keys moved into their groups.

    ``{"ema_rate": 0.9999, "loss_weighting": "min-snr", "min_snr_gamma": 5.0, ...}`` becomes
    ``{"ema": {"rate": 0.9999}, "loss_weighting": {"kind": "min-snr", "min_snr_gamma": 5.0}, ...}``
    (:data:`RENAMED_OPTIONS`); a group's fields the checkpoint does not hold keep the module's
    defaults. Other keys, and hyper-parameters already in the grouped form, are kept as they are.
    """
    migrated = {key: value for key, value in hparams.items() if not is_renamed_option(key, value)}
    for key, value in hparams.items():
        if is_renamed_option(key, value):
            group, field = RENAMED_OPTIONS[key].split(".")
            migrated[group] = {**migrated.get(group, {}), field: value}
    return migrated


class TrainingModule(LightningModule):
    """Base of :class:`DiffusionModule` and ``NoisyClassifierModule``; subclasses set ``self.model``.

    Skipped steps (:mod:`.skipped_steps`): a non-finite loss (decided from the losses all-gathered
    from every rank, so all ranks agree) drops the gradients before the optimizer step (the
    backward still runs: DDP's all-reduce must happen on every rank), so the weights, the optimizer
    state and the EMA are untouched; ``max_consecutive_nonfinite`` such steps in a row stop
    training with an error naming them. Under ``16-mixed`` the loss scaler's own skips (inf
    gradients) are recognised too. After either, neither the EMA nor the LR schedule advances (as
    ADM's ``took_step``); ``train/nonfinite_steps`` and ``train/scaler_skipped_steps`` count them per
    optimizer step.

    Args:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_warmup_steps: linear LR warm-up steps (0 = none).
        lr_anneal_steps: decay the LR to 0 at this step (0 = constant); see :func:`build_lr_scheduler`.
        max_consecutive_nonfinite: raise after this many consecutive non-finite losses.
        lr_schedule: shape of the decay, ``"linear"`` (ADM) or ``"cosine"``.
        compile: ``torch.compile`` the networks (in place: checkpoints are unchanged), applied when the
            Trainer sets the module up (:func:`guided_diffusion.nets.apply_fast_paths`).
        channels_last: keep 4-d weights, and so the convolutions, in NHWC memory order.
    """

    model: nn.Module

    def __init__(self, lr: float, weight_decay: float, lr_warmup_steps: int, lr_anneal_steps: int,
                 max_consecutive_nonfinite: int, lr_schedule: LrSchedule = "linear", *, compile: bool = False,
                 channels_last: bool = False):
        super().__init__()
        self.compile_networks, self.channels_last = compile, channels_last
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
        self.skipped = SkippedSteps(max_consecutive_nonfinite)
        self._generators: dict[str, torch.Generator] = {}

    # ------------------------------------------------------------------ fast paths
    def fast_path_networks(self) -> list[nn.Module]:
        """The networks ``compile`` and ``channels_last`` apply to: the trained one and its EMA copy, if any."""
        ema = getattr(self, "ema", None)
        return [self.model] + ([ema.module] if ema is not None else [])

    def configure_model(self) -> None:
        """Lightning's hook before the strategy wraps the module (DDP): the fast paths, once."""
        for network in self.fast_path_networks():
            apply_fast_paths(network, self.compile_networks, self.channels_last)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = build_lr_scheduler(optimizer, self.lr_warmup_steps, self.lr_anneal_steps, self.lr_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.skipped.loss_nonfinite:
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without gradients alone
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        if scaler is not None and scaler_found_inf(scaler, optimizer):
            self.skipped.scaler_found_inf = True  # GradScaler.step will skip this update
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        params = [p.detach() for p in self.model.parameters()]
        self.log("train/grad_norm", _total_norm(grads))
        self.log("train/param_norm", _total_norm(params))
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        warning = self.skipped.end_step(self.global_step)  # the step just taken or skipped (counted after this hook)
        if warning:
            rank_zero_warn(warning)
        if self.skipped.last_applied:
            self.on_weights_updated()
        self.log("train/nonfinite_steps", float(self.skipped.nonfinite))
        self.log("train/scaler_skipped_steps", float(self.skipped.scaler))

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """The LR schedule follows the updates that were applied (a skipped step does not advance it)."""
        if self.skipped.last_applied:
            super().lr_scheduler_step(scheduler, metric)

    @property
    def nonfinite_steps(self) -> int:
        return self.skipped.nonfinite

    def describe_weights(self, weights: Literal["ema", "raw"] = "ema") -> str:
        """Which weights ``weights`` names, for captions and logs (the EMA's schedule and update count)."""
        ema = getattr(self, "ema", None)
        if weights == "ema" and ema is not None:
            return ema.describe()
        return f"raw weights after {self.global_step} steps"

    def on_weights_updated(self) -> None:
        """Called after every optimizer step that changed the weights (the EMA update)."""

    def check_finite(self, losses: torch.Tensor) -> None:
        """Mark this optimizer step to be skipped when any of ``losses`` (gathered from all ranks) is non-finite.

        The one value a training step reads back from the device (``GradScaler`` reads one too, to
        decide its own skips).
        """
        if not bool(torch.isfinite(losses).all()):
            self.skipped.loss_nonfinite = True

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
    def check_data(self, datamodule: Any = None) -> None:
        """Raise before training when the datamodule's images or classes do not fit the network (``self.config``:
        ``image_size``, ``in_channels``, ``num_classes``); ``datamodule``: default the trainer's."""
        if datamodule is None:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        image_size, in_channels = self.config.image_size, self.config.in_channels
        num_classes = getattr(self.config, "num_classes", None)
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
        checkpoint["nonfinite_steps"] = self.skipped.nonfinite
        checkpoint["scaler_skipped_steps"] = self.skipped.scaler

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped.nonfinite = int(checkpoint.get("nonfinite_steps", 0))
        self.skipped.scaler = int(checkpoint.get("scaler_skipped_steps", 0))


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor | float:
    """The global L2 norm, left on the device (Lightning reads logged tensors only when it writes a log line)."""
    if not tensors:
        return 0.0
    norms = torch._foreach_norm([t.float() for t in tensors])
    return torch.linalg.vector_norm(torch.stack(norms))
