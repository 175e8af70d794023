"""The SDE samplers with the DDPM sampler signature, for ``guided_diffusion.sampling.SAMPLERS``.

    sampler(model, diffusion, shape | x_T, *, y=None, guidance=None, steps=None, generator=None,
            progress=True, clip_denoised=True, denoised_fn=None, model_kwargs=None, device=None,
            **sde_options)

The model and its diffusion become a score model on the diffusion's :class:`~.sdes.DiscreteVPSDE`
(:meth:`~.models.EpsScoreModel.from_diffusion`, timesteps rounded to the grid) and ``steps`` is a
respacing spec as for every sampler: its kept timesteps are the time grid (t_i = i / (K - 1) for
step i of the given diffusion), so with ``steps=None`` the reverse-diffusion predictor takes exactly
the DDPM chain's betas. Yields carry ``t`` as the *original* timestep of the grid point, like the
DDPM samplers: one dict per kept timestep, the last one being the final (denoised) sample.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ..sampler_protocol import Generators, ShapeOrNoise, model_device, randn
from ..sde.models import EpsScoreModel, TimestepMode
from ..sde.samplers import SCORE_SAMPLERS


def _diffusion_sampler(sde_sampler: Callable[..., Iterator[dict]], name: str,
                       **defaults) -> Callable[..., Iterator[dict]]:
    def progressive(model: Callable, diffusion, shape_or_noise: ShapeOrNoise, *, y: Optional[torch.Tensor] = None,
                    guidance=None, steps: str | int | None = None, generator: Generators = None, progress: bool = True,
                    clip_denoised: bool = True, denoised_fn=None, model_kwargs: Optional[dict] = None, device=None,
                    timesteps: TimestepMode = "round", **options) -> Iterator[dict]:
        process = diffusion.respace(steps)
        score_model = EpsScoreModel.from_diffusion(model, diffusion, timesteps=timesteps, clip_denoised=clip_denoised,
                                                   denoised_fn=denoised_fn, model_kwargs=model_kwargs)
        sde = score_model.sde
        index = np.searchsorted(diffusion.timestep_map.numpy(), process.timestep_map.numpy())
        times = torch.as_tensor(index[::-1].copy(), dtype=torch.float64) / (sde.N - 1)
        if isinstance(shape_or_noise, torch.Tensor):
            x = shape_or_noise
        else:
            x = randn(shape_or_noise, generator, device=device or model_device(model))
        for out in sde_sampler(score_model, sde, x, y=y, guidance=guidance, times=times, generator=generator,
                               progress=progress, **{**defaults, **options}):
            yield {**out, "t": int(sde.model_time(out["t"], "round"))}

    progressive.__name__ = progressive.__qualname__ = f"{name.replace('-', '_')}_diffusion_progressive"
    progressive.__doc__ = (f"The {name} SDE sampler on a DDPM model's VP-SDE view (see "
                           f":mod:`guided_diffusion.sampling.sde_bridge`); extra options go to the SDE sampler.")
    return progressive


#: name -> progressive sampler with the DDPM signature (registered in ``guided_diffusion.sampling.SAMPLERS``).
#: (one Langevin step per level for annealed Langevin: the grid is the diffusion's, already fine)
DIFFUSION_SAMPLERS: dict[str, Callable[..., Iterator[dict]]] = {
    name: _diffusion_sampler(sampler, name, **({"steps_per_level": 1} if name == "annealed-langevin" else {}))
    for name, sampler in SCORE_SAMPLERS.items()
}

__all__ = ["DIFFUSION_SAMPLERS"]
