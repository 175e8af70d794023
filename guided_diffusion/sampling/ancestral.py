"""Ancestral sampling (DDPM, Ho et al. 2020): x_{t-1} ~ N(mu_theta(x_t, t), Sigma_theta(x_t, t)).

Works with any respacing and any variance type (fixed small/large, learned); classifier guidance
shifts the mean by s * Sigma * grad log p(y | x_t) (Algorithm 1 of Dhariwal & Nichol 2021).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from ..diffusion import GaussianDiffusion
from ..sampler_protocol import Generators, ShapeOrNoise, last, randn, steps_with_progress
from .common import prepare


def ddpm_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape_or_noise: ShapeOrNoise, *,
                            y: Optional[torch.Tensor] = None, guidance=None, steps: str | int | None = None,
                            generator: Generators = None, progress: bool = True, clip_denoised: bool = True,
                            denoised_fn=None, model_kwargs: Optional[dict] = None, device=None) -> Iterator[dict]:
    """Yield ``{"sample", "pred_xstart", "t"}`` after every reverse step (t = original timestep).

    Args:
        model: ``model(x_t, t, y=None)`` predicting eps (and variance channels if learned).
        diffusion: the process the model was trained with.
        shape_or_noise: the batch shape to draw x_T for, or x_T itself.
        y: class labels, for the guidance and (if class-conditional) the model.
        guidance: a Guidance object (or a list of them); None = unguided.
        steps: respacing spec ("250", "10,15,20", ...); None = all T steps.
        generator: one torch.Generator, or one per sample for batch-independent noise.
        progress: show a progress bar.
        clip_denoised: clip predicted x_0 to [-1, 1] (images); turn off for unbounded data.
        denoised_fn: applied to predicted x_0 before clipping.
        model_kwargs: extra model inputs (e.g. ``low_res`` for super-resolution).
        device: where to draw x_T when a shape is given (default: the model's device).
    """
    predictor, x = prepare(model, diffusion, shape_or_noise, y=y, guidance=guidance, steps=steps,
                           generator=generator, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                           model_kwargs=model_kwargs, device=device)
    process = predictor.process
    for i in steps_with_progress(range(process.num_timesteps - 1, -1, -1), progress, "ddpm"):
        out = predictor.predict(x, i, "mean")
        if i > 0:
            x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * randn(x.shape, generator, x.device, x.dtype)
        else:
            x = out["mean"]
        yield {"sample": x, "pred_xstart": out["pred_xstart"], "t": int(process.timestep_map[i])}


def ddpm_sample(model, diffusion, shape_or_noise, **options) -> torch.Tensor:
    """The final sample of :func:`ddpm_sample_progressive` (same arguments)."""
    return last(ddpm_sample_progressive(model, diffusion, shape_or_noise, **options))
