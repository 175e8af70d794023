"""The fixed-grid samplers of a score model with the discrete sampler signature (the ``"sde"`` family).

    sampler(model, diffusion, x_T, grid, *, y=None, guidance=None, generator=None, progress=True,
            callback=None, clip_denoised=True, denoised_fn=None, model_kwargs=None, timesteps="round",
            **sde_options) -> Tensor

The model and its diffusion become a score model on the diffusion's :class:`~..sde.sdes.DiscreteVPSDE`
(:meth:`~..sde.models.EpsScoreModel.from_diffusion`; ``timesteps`` says how times between its steps
are read, rounded to the nearest by default) and the grid's timesteps become the SDE times: step k
of the diffusion sits at t_k = k / (K - 1), so the grid of every step makes the reverse-diffusion
predictor take exactly the DDPM chain's betas. The callback sees ``t`` as the *original* timestep
of the grid point, as with the discrete samplers: one call per grid timestep, the last one with the
final (denoised) sample.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..noise import Generators
from ..sampler_protocol import StepCallback
from ..sde.models import EpsScoreModel, TimestepMode
from ..sde.registry import ScoreSamplerSpec
from .grid import TimeGrid


def on_diffusion(score_sampler: ScoreSamplerSpec, **defaults) -> Callable[..., torch.Tensor]:
    """The score sampler ``score_sampler`` driving a DDPM model through its VP-SDE view (see the module docstring).

    Args:
        score_sampler: a fixed-grid sampler of :data:`~..sde.registry.SCORE_SAMPLERS`.
        defaults: options given to it unless the caller sets them.
    """
    if score_sampler.grid != "fixed":
        raise ValueError(f"the {score_sampler.name} sampler chooses its own times: it cannot walk a time grid")

    def sampler(model: Callable, diffusion, x: torch.Tensor, grid: TimeGrid, *, y: Optional[torch.Tensor] = None,
                guidance=None, generator: Generators = None, progress: bool = True, callback: StepCallback = None,
                clip_denoised: bool = True, denoised_fn=None, model_kwargs: Optional[dict] = None,
                timesteps: TimestepMode = "round", **options) -> torch.Tensor:
        score_model = EpsScoreModel.from_diffusion(model, diffusion, timesteps=timesteps, clip_denoised=clip_denoised,
                                                   denoised_fn=denoised_fn, model_kwargs=model_kwargs)
        sde = score_model.sde
        times = torch.as_tensor(grid.indices(diffusion)[::-1].copy(), dtype=torch.float64) / (sde.N - 1)

        def report(step: dict) -> None:
            callback({**step, "t": int(sde.model_time(step["t"], "round"))})

        return score_sampler.function(score_model, sde, x, y=y, guidance=guidance, times=times, generator=generator,
                                      progress=progress, callback=None if callback is None else report,
                                      **{**defaults, **options})

    sampler.__name__ = sampler.__qualname__ = f"{score_sampler.name.replace('-', '_')}_on_diffusion"
    sampler.__doc__ = (f"{score_sampler.description[0].upper()}{score_sampler.description[1:]}, on a DDPM model's "
                       f"VP-SDE view (see :mod:`guided_diffusion.sampling.sde_bridge`); options go to the score "
                       f"sampler.")
    return sampler


__all__ = ["on_diffusion"]
