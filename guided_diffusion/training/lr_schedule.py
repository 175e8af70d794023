"""The learning-rate schedule of every training module, from torch's own schedulers (plain PyTorch)."""
from __future__ import annotations

from typing import Literal

import torch
from torch.optim import lr_scheduler as schedulers

__all__ = ["LrSchedule", "build_lr_scheduler"]

LrSchedule = Literal["linear", "cosine"]


def build_lr_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int = 0, anneal_steps: int = 0,
                       schedule: LrSchedule = "linear") -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step LR schedule from torch's schedulers: lr_s = lr * f(s) at optimizer step s, with

    - warm-up (W = ``warmup_steps`` >= 2; 0 and 1 mean none, W = 0): f(s) = (s + 1) / W for s < W
      (``LinearLR``);
    - decay (A = ``anneal_steps`` > W) from f(W) = 1 to f(A) = 0, then 0:
      ``"linear"``: f(s) = 1 - (s - W) / (A - W) (``LinearLR``; with W = 0 exactly guided-diffusion's
      ``lr_anneal_steps``: lr * (1 - s / A)); ``"cosine"``: f(s) = (1 + cos(pi (s - W) / (A - W))) / 2
      (``CosineAnnealingLR``);
    - A = 0: constant after the warm-up (ADM's diffusion runs).
    """
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose 'linear' or 'cosine'")
    if anneal_steps and anneal_steps <= warmup_steps:
        raise ValueError(f"lr_anneal_steps ({anneal_steps}) must exceed lr_warmup_steps ({warmup_steps})")
    phases, milestones = [], []
    warmup_steps = warmup_steps if warmup_steps > 1 else 0
    if warmup_steps:
        phases.append(schedulers.LinearLR(optimizer, 1.0 / warmup_steps, 1.0, total_iters=warmup_steps - 1))
        milestones.append(warmup_steps)
    if anneal_steps:
        length = anneal_steps - warmup_steps
        if schedule == "linear":
            phases.append(schedulers.LinearLR(optimizer, 1.0, 0.0, total_iters=length))
        else:
            phases.append(schedulers.CosineAnnealingLR(optimizer, T_max=length, eta_min=0.0))
            milestones.append(anneal_steps)
            phases.append(schedulers.ConstantLR(optimizer, factor=0.0, total_iters=2**62))
    if not phases:
        return schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if len(phases) == 1:
        return phases[0]
    return schedulers.SequentialLR(optimizer, phases, milestones[:len(phases) - 1])
