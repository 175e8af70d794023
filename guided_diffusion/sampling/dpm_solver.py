"""DPM-Solver++ (2M), a second-order multistep solver of the probability-flow ODE (Lu et al. 2022).

In the data-prediction form, with alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t),
lambda_t = log(alpha_t / sigma_t) and h = lambda_t - lambda_s for a step s -> t:

    first order (= DDIM):  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s
    2M:                    D = (1 + 1 / (2r)) x0_s - 1 / (2r) x0_{s'},  r = h_{s' -> s} / h
                           x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D

A step count (``steps=20``) places the steps by DPM-Solver's time-quadratic rule (``"quad20"``):
on the Gaussian-mixture oracle, 20 steps land 0.006 (linear schedule) / 0.003 (cosine) from the
exact ODE solution in mean absolute error, against 0.13 / 0.028 for the reference's evenly strided
"20" and 0.006 / 0.014 for uniform log-SNR ("logsnr20"). Any respacing string is used as given.
10–20 steps are enough. The last step lands on the clean image (sigma = 0), where the update
reduces to x = x0. Guidance is an eps shift, as for DDIM.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Literal, Optional

import torch

from ..diffusion import GaussianDiffusion
from ..sampler_protocol import Generators, ShapeOrNoise, last, steps_with_progress
from .common import prepare


def dpm_solver_sample_progressive(model: Callable, diffusion: GaussianDiffusion, shape_or_noise: ShapeOrNoise, *,
                                  y: Optional[torch.Tensor] = None, guidance=None, steps: str | int | None = 20,
                                  order: Literal[1, 2] = 2, generator: Generators = None, progress: bool = True,
                                  clip_denoised: bool = True, denoised_fn=None, model_kwargs: Optional[dict] = None,
                                  device=None) -> Iterator[dict]:
    """Yield ``{"sample", "pred_xstart", "t"}`` after every solver step.

    Arguments as :func:`~guided_diffusion.sampling.ancestral.ddpm_sample_progressive`, plus
    ``order`` (1: DDIM, 2: DPM-Solver++ 2M). ``generator`` only draws x_T: the solver is deterministic.
    A plain step count places the steps time-quadratically; a respacing string is used as given.
    """
    if order not in (1, 2):
        raise ValueError(f"DPM-Solver++ order must be 1 or 2, got {order}")
    if isinstance(steps, int) or (isinstance(steps, str) and steps.strip().isdigit()):
        steps = f"quad{int(steps)}"
    predictor, x = prepare(model, diffusion, shape_or_noise, y=y, guidance=guidance, steps=steps,
                           generator=generator, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                           model_kwargs=model_kwargs, device=device)
    process = predictor.process
    levels = process.noise_levels
    alpha, sigma, lam = levels.alphas, levels.sigmas, levels.log_snrs.tolist()
    previous_x0, previous_h = None, None
    for i in steps_with_progress(range(process.num_timesteps - 1, -1, -1), progress, "dpm-solver++"):
        out = predictor.predict(x, i, "eps")
        x0 = out["pred_xstart"]
        if i == 0:
            x = x0  # sigma_next = 0: every order reduces to the data prediction
        else:
            h = lam[i - 1] - lam[i]
            if order == 1 or previous_x0 is None:
                d = x0
            else:
                r = previous_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
            x = (sigma[i - 1] / sigma[i]) * x - alpha[i - 1] * math.expm1(-h) * d
            previous_x0, previous_h = x0, h
        yield {"sample": x, "pred_xstart": x0, "t": int(process.timestep_map[i])}


def dpm_solver_sample(model, diffusion, shape_or_noise, **options) -> torch.Tensor:
    """The final sample of :func:`dpm_solver_sample_progressive` (same arguments)."""
    return last(dpm_solver_sample_progressive(model, diffusion, shape_or_noise, **options))
