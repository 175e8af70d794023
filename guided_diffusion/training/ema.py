"""Exponential moving average of a network's weights, kept *inside* the LightningModule.

Why not Lightning's ``EMAWeightAveraging`` callback: it averages a deep copy of the whole
LightningModule with a fixed decay (no warm-up), keeps that copy outside the module, writes the
averaged weights over ``state_dict`` in checkpoints (the raw ones move to another key) and copies
them into the model when training ends. Sampling callbacks would have to find the callback,
``load_diffusion_checkpoint`` would have to know which of the two weight sets a file holds, and a
resume without the callback silently starts the EMA from the raw weights. Kept as a submodule
instead (timm's ``ModelEmaV3``), the EMA is plain module state: it is in
every checkpoint under ``ema.module.*`` next to ``model.*``, it is restored on resume by the
ordinary ``load_state_dict``, DDP broadcasts it from rank 0 at start-up and every rank applies the
same update to the same all-reduced weights, so it stays identical on all ranks; its update count
is a buffer, so the warm-up continues across a resume.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping, Optional

import torch
from timm.utils import ModelEmaV3
from torch import nn

from ..option_groups import coerce_group

EmaSchedule = Literal["rate", "power"]
EMA_SCHEDULES: tuple[str, ...] = ("rate", "power")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class EmaOptions:
    """The EMA of the trained weights: the weights validation, sampling and prediction use.

    Update n (n = 0, 1, ...) sets ema <- beta_n * ema + (1 - beta_n) * theta with the decay
    beta_n of :func:`ema_decay`:

    - ``schedule: rate``: beta_n = rate, or with ``warmup`` beta_n = min(rate, (1 + n) / (10 + n));
      the average spans about 1 / (1 - rate) updates whatever the run's length.
    - ``schedule: power``: beta_n = (1 - 1 / (n + 1))^(power_gamma + 1). After N updates the
      weights of update k count in proportion to k^gamma, so the average spans a fixed fraction of
      any run, of relative width sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))).

    Args:
        rate: the decay of the ``rate`` schedule, in [0, 1) (ADM: 0.9999).
        warmup: the warm-up min(rate, (1 + n) / (10 + n)) of the ``rate`` schedule (without it,
            beta_n = rate from the first update).
        schedule: ``rate`` (ADM: beta_n = rate, with ``warmup`` min(rate, (1 + n) / (10 + n))) or
            ``power`` (EDM2's power-function EMA: beta_n = (1 - 1 / (n + 1))^(power_gamma + 1)).
        power_gamma: the exponent gamma > 0 of the ``power`` schedule (6.94: sigma_rel 0.10;
            16.97: sigma_rel 0.05; larger = shorter memory).
    """

    rate: float = 0.9999
    warmup: bool = True
    schedule: EmaSchedule = "rate"
    power_gamma: float = 6.94

    def __post_init__(self) -> None:
        if not _is_number(self.rate) or not 0.0 <= self.rate < 1.0:
            raise ValueError(f"ema.rate must lie in [0, 1), got {self.rate!r}")
        if not isinstance(self.warmup, bool):
            raise ValueError(f"ema.warmup must be true or false, got {self.warmup!r}")
        if self.schedule not in EMA_SCHEDULES:
            raise ValueError(f"unknown EMA schedule {self.schedule!r} (ema.schedule): choose 'rate' or 'power'")
        if not _is_number(self.power_gamma) or self.power_gamma <= 0:
            raise ValueError(f"ema.power_gamma (the power EMA's gamma) must be a number > 0, got {self.power_gamma!r}")

    @classmethod
    def coerce(cls, value: EmaOptions | Mapping[str, Any], default: Optional[EmaOptions] = None) -> EmaOptions:
        """``value`` itself, or its dict form (``{"rate": 0.999, ...}``) over ``default`` (``EmaOptions()``)."""
        return coerce_group(cls, value, "EMA", default)


def ema_decay(n: int, schedule: EmaSchedule = "rate", *, rate: float = 0.9999, warmup: bool = True,
              power_gamma: float = 6.94) -> float:
    """The decay beta_n of the n-th EMA update (n = 0, 1, ...): ema <- beta_n * ema + (1 - beta_n) * theta.

    - ``"rate"`` (ADM): beta_n = rate, or with ``warmup`` beta_n = min(rate, (1 + n) / (10 + n)).
      A fixed rate averages over ~1 / (1 - rate) updates whatever the run's length: 10k updates at
      ADM's 0.9999, longer than a short run.
    - ``"power"`` (Karras et al. 2024, EDM2, eq. 2): beta_n = (1 - 1 / (n + 1))^(gamma + 1). The
      average after N updates weighs the weights of update k in proportion to k^gamma, so it spans
      a fixed *fraction* of any run: its relative width is
      sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (gamma 6.94 -> sigma_rel 0.10,
      gamma 16.97 -> 0.05). beta_0 = 0: the first update copies the weights.
    """
    if schedule == "rate":
        return min(rate, (1 + n) / (10 + n)) if warmup else rate
    if schedule == "power":
        return (1.0 - 1.0 / (n + 1)) ** (power_gamma + 1.0)
    raise ValueError(f"unknown EMA schedule {schedule!r}; choose 'rate' or 'power'")


def power_ema_sigma_rel(gamma: float) -> float:
    """EDM2's relative standard deviation of the power-function EMA profile of exponent ``gamma``."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class EMA(ModelEmaV3):
    """EMA of ``model`` with the decay of :func:`ema_decay` at the n-th update.

    The default (``schedule="rate"`` with ``warmup``) is decay_n = min(rate, (1 + n) / (10 + n)),
    so early EMA weights follow the model instead of averaging in the random initialisation
    (improved-diffusion issue #59: early EMA checkpoints sample noise); ``schedule="power"`` is EDM2's
    power-function EMA, which suits any run length. The copy never requires grad (DDP would report
    its parameters as unused). ``ema.module`` is the averaged network.

    Args:
        model: the network to average (deep-copied).
        rate: the EMA rate of the ``"rate"`` schedule (ADM: 0.9999).
        warmup: the warm-up of the ``"rate"`` schedule (otherwise ``rate`` from the first update).
        schedule: ``"rate"`` (ADM) or ``"power"`` (EDM2).
        power_gamma: the exponent gamma of the ``"power"`` schedule (6.94: sigma_rel = 0.10).

    The arguments are checked as :class:`EmaOptions` (:meth:`from_options` takes the group).
    """

    def __init__(self, model: nn.Module, rate: float = 0.9999, warmup: bool = True, schedule: EmaSchedule = "rate",
                 power_gamma: float = 6.94):
        options = EmaOptions(rate=rate, warmup=warmup, schedule=schedule, power_gamma=power_gamma)
        super().__init__(model, decay=options.rate)
        self.warmup, self.schedule, self.power_gamma = options.warmup, options.schedule, options.power_gamma
        self.requires_grad_(False)
        # Follow the owner's train/eval mode like any submodule (Lightning's evaluation loops switch
        # it to eval); ``DiffusionModule.sample`` puts it in eval mode explicitly.
        self.module.train(model.training)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_options(cls, model: nn.Module, options: EmaOptions) -> EMA:
        """The EMA of ``model`` with the schedule ``options`` names."""
        return cls(model, options.rate, options.warmup, options.schedule, options.power_gamma)

    def get_decay(self, step: Optional[int] = None) -> float:
        """The decay of the next update (``step`` is ignored: the count is :attr:`num_updates`)."""
        return ema_decay(int(self.num_updates), self.schedule, rate=self.decay, warmup=self.warmup,
                         power_gamma=self.power_gamma)

    def describe(self) -> str:
        """What these weights are, for captions and logs (e.g. ``EMA power gamma=6.94 after 1200 updates``)."""
        n = int(self.num_updates)
        if self.schedule == "power":
            sigma_rel = power_ema_sigma_rel(self.power_gamma)
            kind = f"power-function EMA (gamma {self.power_gamma:g}, sigma_rel {sigma_rel:.3f})"
        else:
            kind = f"EMA rate {self.decay:g}" + (" with warm-up" if self.warmup else "")
        return f"{kind} after {n} updates"

    def __getstate__(self) -> dict:
        # timm's stochastic-rounding generator (only used for bf16 EMA tensors) does not survive
        # the pickling of ``ddp_spawn``; without it timm falls back to the default generator.
        state = super().__getstate__()
        state["_sr_generator"] = None
        return state

    @torch.no_grad()
    def update(self, model: nn.Module, step: Optional[int] = None) -> None:
        super().update(model)
        self.num_updates += 1
