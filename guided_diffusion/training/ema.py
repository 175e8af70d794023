"""Exponential moving average of a network's weights, kept *inside* the LightningModule.

Why not Lightning's ``EMAWeightAveraging`` callback: it averages a deep copy of the whole
LightningModule with a fixed decay (no warm-up), keeps that copy outside the module, writes the
averaged weights over ``state_dict`` in checkpoints (the raw ones move to another key) and copies
them into the model when training ends. Sampling callbacks would have to find the callback,
``load_diffusion_checkpoint`` would have to know which of the two weight sets a file holds, and a
resume without the callback silently starts the EMA from the raw weights. Kept as a submodule
instead (timm's ``ModelEmaV3``, the EMA the design names), the EMA is plain module state: it is in
every checkpoint under ``ema.module.*`` next to ``model.*``, it is restored on resume by the
ordinary ``load_state_dict``, DDP broadcasts it from rank 0 at start-up and every rank applies the
same update to the same all-reduced weights, so it stays identical on all ranks; its update count
is a buffer, so the warm-up continues across a resume.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.utils import ModelEmaV3
from torch import nn


class EMA(ModelEmaV3):
    """EMA of ``model`` with warm-up: the n-th update (n = 0, 1, ...) uses the decay

        decay_n = min(rate, (1 + n) / (10 + n))

    so early EMA weights follow the model instead of averaging in the random initialisation
    (improved-diffusion #59: early EMA checkpoints sample noise). The copy never requires grad
    (DDP would report its parameters as unused). ``ema.module`` is the averaged network.

    Args:
        model: the network to average (deep-copied).
        rate: the EMA rate (ADM: 0.9999).
        warmup: use the warm-up schedule above (otherwise ``rate`` from the first update).
    """

    def __init__(self, model: nn.Module, rate: float = 0.9999, warmup: bool = True):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must lie in [0, 1), got {rate}")
        super().__init__(model, decay=rate)
        self.warmup = warmup
        self.requires_grad_(False)
        # Follow the owner's train/eval mode like any submodule (Lightning's evaluation loops switch
        # it to eval); ``DiffusionModule.sample`` puts it in eval mode explicitly.
        self.module.train(model.training)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def get_decay(self, step: Optional[int] = None) -> float:
        """The decay of the next update (``step`` is ignored: the count is :attr:`num_updates`)."""
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

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
