"""Ancestral sampling (DDPM, Ho et al. 2020): x_{t-1} ~ N(mu_theta(x_t, t), Sigma_theta(x_t, t)).

Works with any time grid and any variance type (fixed small/large, learned); classifier guidance
shifts the mean by s * Sigma * grad log p(y | x_t) (Algorithm 1 of Dhariwal & Nichol 2021). Each step
goes through :meth:`~.common.GuidedPredictor.step` (repeated, re-noised in between, for a training-free
guidance with recurrence > 1).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..diffusion import GaussianDiffusion
from ..noise import Generators, randn
from ..sampler_protocol import StepCallback, steps_with_progress
from .common import GuidedPredictor
from .grid import TimeGrid


def ddpm_sample(model: Callable, diffusion: GaussianDiffusion, x: torch.Tensor, grid: TimeGrid, *,
                y: Optional[torch.Tensor] = None, guidance=None, generator: Generators = None, progress: bool = True,
                callback: StepCallback = None, clip_denoised: bool = True, denoised_fn=None,
                model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Walk the reverse chain over ``grid`` from x_T = ``x``, drawing x_{t-1} ~ p(x_{t-1} | x_t) at each step
    (the mean alone at the last step); return x_0.

    Args:
        model: ``model(x_t, t, y=None)`` predicting eps (and variance channels if learned).
        diffusion: the process the model was trained with (or one of its respacings).
        x: x_T, the starting noise (B, ...).
        grid: the original timesteps to visit (:class:`~.grid.TimeGrid`).
        y: class labels (B,), for the guidance and (if class-conditional) the model.
        guidance: a Guidance object (or a list of them); None = unguided.
        generator: one torch.Generator, or one per sample for batch-independent noise.
        progress: show a progress bar.
        callback: called after every step with ``{"i", "t", "sample", "pred_xstart"}`` (t: original timestep).
        clip_denoised: clip predicted x_0 to [-1, 1] (images); turn off for unbounded data.
        denoised_fn: applied to predicted x_0 before clipping.
        model_kwargs: extra model inputs (e.g. ``low_res`` for super-resolution).
    """
    predictor = GuidedPredictor(model, grid.process(diffusion), y=y, guidance=guidance, clip_denoised=clip_denoised,
                                denoised_fn=denoised_fn, model_kwargs=model_kwargs, generator=generator)
    process = predictor.process
    for step, i in enumerate(steps_with_progress(range(process.num_timesteps - 1, -1, -1), progress, "ddpm")):
        x, out = predictor.step(x, i, "mean", lambda out, x_t: _ancestral_update(out, x_t, i, generator))
        if callback is not None:
            callback({"i": step, "t": int(process.timestep_map[i]), "sample": x, "pred_xstart": out["pred_xstart"]})
    return x


def _ancestral_update(out: dict, x: torch.Tensor, index: int, generator: Generators) -> torch.Tensor:
    """x_{t-1} ~ N(mean, Sigma) of the prediction ``out``; the mean alone at the last step (index 0)."""
    if index == 0:
        return out["mean"]
    return out["mean"] + torch.exp(0.5 * out["log_variance"]) * randn(x.shape, generator, x.device, x.dtype)


__all__ = ["ddpm_sample"]
