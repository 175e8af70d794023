"""Optimizer steps that did not change the weights, and why: a non-finite loss, or the fp16 loss scaler.

ADM's training loop (``TrainLoop.run_step``) updates the EMA and anneals the learning rate only after
a step that was taken (``took_step``); the same holds here for both kinds of skipped step:

- **non-finite loss** (any micro-batch of the accumulation window, on any rank: the losses are
  all-gathered, so every rank decides alike): the gradients are dropped before the optimizer step.
  These are errors of the run: ``max_consecutive`` of them in a row stop training.
- **loss-scaler skips** (``16-mixed``): ``GradScaler`` found inf/NaN gradients after unscaling,
  skipped ``optimizer.step`` and lowered its scale. They are expected while fp16 calibrates its
  scale and are only counted.

Counts are per optimizer step (one per accumulation window), never per micro-batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class SkippedSteps:
    """The skip state of a run.

    Args:
        max_consecutive: raise after this many consecutive non-finite-loss steps.
    """

    max_consecutive: int
    nonfinite: int = 0
    """Optimizer steps skipped for a non-finite loss."""
    scaler: int = 0
    """Optimizer steps the fp16 loss scaler skipped."""
    consecutive: int = 0
    """Non-finite-loss steps in a row, up to now."""
    loss_nonfinite: bool = False
    """The current accumulation window saw a non-finite loss."""
    scaler_found_inf: bool = False
    """The loss scaler found inf/NaN gradients in the current step."""
    last_applied: bool = True
    """Whether the last optimizer step changed the weights (the LR schedule and the EMA follow it)."""

    def end_step(self, step: int) -> Optional[str]:
        """Close the optimizer step ``step``: count it, reset the window; a warning to show, if any.

        Raises ``FloatingPointError`` after ``max_consecutive`` non-finite-loss steps in a row.
        """
        warning = None
        if self.loss_nonfinite:
            self.nonfinite += 1
            self.consecutive += 1
            first = step - self.consecutive + 1
            if self.consecutive >= self.max_consecutive:
                raise FloatingPointError(
                    f"training stopped at step {step}: the loss was non-finite in {self.consecutive} consecutive "
                    f"steps ({first}..{step}); those updates were skipped, so the weights (and the EMA) are still "
                    "finite. Lower the learning rate, enable gradient clipping (trainer.gradient_clip_val) or use "
                    "bf16-mixed instead of 16-mixed.")
            warning = f"non-finite loss at step {step}: optimizer step skipped ({self.nonfinite} skipped so far)"
        else:
            self.consecutive = 0
            if self.scaler_found_inf:
                self.scaler += 1
        self.last_applied = not (self.loss_nonfinite or self.scaler_found_inf)
        self.loss_nonfinite = self.scaler_found_inf = False
        return warning


def scaler_found_inf(scaler, optimizer) -> bool:
    """Whether ``GradScaler.unscale_`` found inf/NaN gradients of ``optimizer`` this step (its ``step`` will skip).

    One read from the device, as ``GradScaler.step`` makes itself to decide.
    """
    state = scaler._per_optimizer_states.get(id(optimizer), {})
    found = state.get("found_inf_per_device", {})
    return bool(found) and bool(sum(v.to("cpu", torch.float32) for v in found.values()) > 0)
