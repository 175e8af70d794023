"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself").

The model D_1 is guided by a weaker model D_0 of the same task (an earlier checkpoint of the same run, a
smaller network, or both), in place of the unconditional model of classifier-free guidance:

    D_w(x; sigma, c) = w D_1(x; sigma, c) + (1 - w) D_0(x; sigma, c) = D_0 + w (D_1 - D_0),    w >= 0.

w = 1 is the model alone, w = 0 the guide alone, w > 1 pushes away from the guide's errors (which the better
model does not share), sharpening where the guide is too wide without the loss of variety of classifier-free
guidance. The guide sees the same x_t, timestep and (if it is class-conditional) the same label.

Any prediction target works as long as both networks predict the same one (eps, x_0 or v): at fixed
(x_t, t) each target is an affine function of D with the same coefficients for both networks, so the
combination with weights w and 1 - w (which sum to 1) is the same in every target. Learned-variance channels
are the model's. Outside the ``interval``, w = 1: the model alone, and the guide is not evaluated.

Composes with every other guidance kind: it changes the model call (``wrap_model``), so classifier guidance
corrects the autoguided prediction, and a guidance chain applies it innermost (before classifier-free guidance:
each of the two classifier-free branches is then autoguided, and a class-conditional guide needs a null label
for the unconditional one). Works with every sampler that calls the model through ``wrap_model``: DDPM, DDIM,
DPM-Solver and the score-SDE samplers of a diffusion model.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..sampler_protocol import model_takes_labels
from .kinds import Guidance
from .levels import GuidanceInterval, IntervalVariable, NoiseLevel, as_interval, check_scale


class AutoguidedModel(nn.Module):
    """``D_0 + w (D_1 - D_0)`` on the first ``C`` output channels (the prediction), the model's channels after them.

    Args:
        model: D_1, ``model(x_t, t, y=None, **kwargs)``.
        guide: D_0, called like the model (with ``y`` only if it is class-conditional).
        scale: w.
    """

    def __init__(self, model: Callable, guide: Callable, scale: float):
        super().__init__()
        self.model, self.guide, self.scale = model, guide, float(scale)
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        out = self.model(x, t, y=y, **kwargs)
        if self.scale == 1.0:
            return out
        guide_y = y if model_takes_labels(self.guide) else None
        guided = self.guide(x, t, y=guide_y, **kwargs)
        c = x.shape[1]
        prediction = guided[:, :c] + self.scale * (out[:, :c] - guided[:, :c])
        return torch.cat([prediction, out[:, c:]], dim=1) if out.shape[1] > c else prediction


class Autoguidance(Guidance):
    """Guide the model by a weaker version of itself (module docstring).

    Args:
        guide: the guide network D_0 (same image size, channels, classes, noise process and prediction target as
            the model: :func:`~guided_diffusion.generation.pairing.check_guide` checks the files).
        scale: w in D_0 + w (D_1 - D_0) (finite, >= 0; 1 = the model alone). Karras et al. use w ~ 2-3.
        interval: autoguide only where the step's ``interval_in`` lies in [lo, hi] (inclusive); outside w = 1.
        interval_in: ``t`` (the model's timestep) or ``sigma`` (sigma_t / alpha_t).
    """

    def __init__(self, guide: Callable, scale: float, *,
                 interval: Optional[GuidanceInterval | Sequence[float]] = None, interval_in: IntervalVariable = "t"):
        self.guide = guide
        if isinstance(guide, nn.Module):
            guide.eval()
        self.scale = check_scale(scale, "autoguidance scale")
        self.interval = as_interval(interval, interval_in)

    @property
    def active(self) -> bool:
        return self.scale != 1.0

    @property
    def step_dependent(self) -> bool:
        return self.interval is not None and self.active

    def network_roles(self) -> list[tuple[str, nn.Module]]:
        return [("guide_model", self.guide)] if isinstance(self.guide, nn.Module) else []

    def at(self, level: NoiseLevel) -> Guidance:
        if self.interval is None or self.interval.contains(level):
            return self
        return Guidance()  # the model alone

    def wrap_model(self, model: Callable) -> Callable:
        return AutoguidedModel(model, self.guide, self.scale) if self.active else model


__all__ = ["Autoguidance", "AutoguidedModel"]
