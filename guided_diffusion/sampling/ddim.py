"""DDIM (Song et al. 2020): the non-Markovian sampler with eta, and deterministic inversion.

    x_{t-1} = sqrt(abar_{t-1}) x_0 + sqrt(1 - abar_{t-1} - sigma_t^2) eps + sigma_t z,
    sigma_t = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1})

eta = 0 is the deterministic probability-flow discretisation (and is invertible: ``ddim_invert``
runs it forward, image -> noise); eta = 1 matches ancestral sampling with fixed-small variance.
Classifier guidance enters as an eps shift (Algorithm 2 of Dhariwal & Nichol 2021). Each step of
:func:`ddim_sample` goes through :meth:`~.common.GuidedPredictor.step` (repeated, re-noised in between, for
a training-free guidance with recurrence > 1).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..diffusion import GaussianDiffusion
from ..noise import Generators, randn
from ..sampler_protocol import StepCallback, check_labels, steps_with_progress
from .common import GuidedPredictor
from .grid import Steps, TimeGrid, parse_steps


def _check_eta(eta: float) -> float:
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"DDIM eta must lie in [0, 1], got {eta}")
    return float(eta)


def ddim_sample(model: Callable, diffusion: GaussianDiffusion, x: torch.Tensor, grid: TimeGrid, *,
                y: Optional[torch.Tensor] = None, guidance=None, eta: float = 0.0, generator: Generators = None,
                progress: bool = True, callback: StepCallback = None, clip_denoised: bool = True, denoised_fn=None,
                model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Walk ``grid`` from x_T = ``x`` with the DDIM update above; return x_0.

    Arguments as :func:`~guided_diffusion.sampling.ancestral.ddpm_sample`, plus ``eta`` in [0, 1]
    (0: deterministic; ``generator`` then only matters for x_T). For a 1000-step model the usual
    grids are ``"ddim25"``-``"ddim50"``.
    """
    eta = _check_eta(eta)
    predictor = GuidedPredictor(model, grid.process(diffusion), y=y, guidance=guidance, clip_denoised=clip_denoised,
                                denoised_fn=denoised_fn, model_kwargs=model_kwargs, generator=generator)
    process = predictor.process
    for step, i in enumerate(steps_with_progress(range(process.num_timesteps - 1, -1, -1), progress, "ddim")):
        x, out = predictor.step(x, i, "eps", lambda out, x_t: ddim_step(process, out, x_t, i, eta, generator))
        if callback is not None:
            callback({"i": step, "t": int(process.timestep_map[i]), "sample": x, "pred_xstart": out["pred_xstart"]})
    return x


def ddim_step(process: GaussianDiffusion, out: dict, x: torch.Tensor, index: int, eta: float,
              generator: Generators = None) -> torch.Tensor:
    """One DDIM update from step ``index`` of ``process`` to the previous one, given the prediction."""
    abar, abar_prev = float(process.alphas_cumprod[index]), float(process.alphas_cumprod_prev[index])
    sigma = eta * ((1 - abar_prev) / (1 - abar)) ** 0.5 * (1 - abar / abar_prev) ** 0.5
    mean = out["pred_xstart"] * abar_prev ** 0.5 + (1 - abar_prev - sigma ** 2) ** 0.5 * out["eps"]
    if index == 0 or sigma == 0.0:
        return mean
    return mean + sigma * randn(x.shape, generator, x.device, x.dtype)


def ddim_invert(model: Callable, diffusion: GaussianDiffusion, x0: torch.Tensor, *,
                y: Optional[torch.Tensor] = None, guidance=None, steps: Steps | TimeGrid = None,
                fixed_point_iterations: int = 0, progress: bool = True, callback: StepCallback = None,
                clip_denoised: bool = False, denoised_fn=None, model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Deterministic DDIM encoding, image -> noise: the eta = 0 update run forward in time; returns x_T.

    Step i lifts x from the noise level of step i - 1 (the clean image for i = 0) to that of step
    i, with the prediction made at the level x is at:

        x_{t_i} = sqrt(abar_{t_i}) x_0(x, t_{i-1}) + sqrt(1 - abar_{t_i}) eps(x, t_{i-1})

    so the last latent sits exactly where :func:`ddim_sample` on the same grid starts. This
    explicit step is only approximately undone by sampling (the sampler predicts at the upper
    level). ``fixed_point_iterations`` > 0 refines each step towards the exact inverse of the DDIM
    sampling step, solving x = sqrt(abar_i / abar_{i-1}) (x_prev - sqrt(1 - abar_{i-1}) eps(x, t_i))
    + sqrt(1 - abar_i) eps(x, t_i) by iteration, at one model call per iteration.

    Args:
        model, diffusion, y, guidance, progress, clip_denoised, denoised_fn, model_kwargs: as
            :func:`~guided_diffusion.sampling.ancestral.ddpm_sample`.
        x0: the images to encode (B, ...).
        steps: a respacing spec (:data:`~.grid.Steps`, read once here) or a :class:`~.grid.TimeGrid`.
        fixed_point_iterations: refinement iterations per step (>= 0).
        callback: called after every step with ``{"i", "t", "sample", "pred_xstart"}``, ``t`` the original
            timestep reached.
    """
    if fixed_point_iterations < 0:
        raise ValueError(f"fixed_point_iterations must be >= 0, got {fixed_point_iterations}")
    grid = parse_steps(steps, diffusion)
    x = x0
    predictor = GuidedPredictor(model, grid.process(diffusion), y=check_labels(y, x), guidance=guidance,
                                clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs)
    process = predictor.process
    for i in steps_with_progress(range(process.num_timesteps), progress, "ddim-invert"):
        abar, abar_prev = float(process.alphas_cumprod[i]), float(process.alphas_cumprod_prev[i])
        out = predictor.predict(x, max(i - 1, 0), "eps")
        lifted = out["pred_xstart"] * abar ** 0.5 + (1 - abar) ** 0.5 * out["eps"]
        for _ in range(fixed_point_iterations):
            out = predictor.predict(lifted, i, "eps")
            lifted = ((abar / abar_prev) ** 0.5 * (x - (1 - abar_prev) ** 0.5 * out["eps"])
                      + (1 - abar) ** 0.5 * out["eps"])
        x = lifted
        if callback is not None:
            callback({"i": i, "t": int(process.timestep_map[i]), "sample": x, "pred_xstart": out["pred_xstart"]})
    return x


__all__ = ["ddim_sample", "ddim_step", "ddim_invert"]
