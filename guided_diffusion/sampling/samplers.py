"""The samplers by name: the discrete ones of this package and the SDE family through :mod:`.sde_bridge`.

    sample(model, diffusion, shape | x_T, *, sampler="ddim", y=None, guidance=None, steps=..., generator=None,
           progress=True, **options) -> Tensor
"""
from __future__ import annotations

from typing import Callable, Iterator, Literal

import torch

from ..sampler_protocol import last
from .ancestral import ddpm_sample_progressive
from .ddim import ddim_sample_progressive
from .dpm_solver import dpm_solver_sample_progressive
from .sde_bridge import DIFFUSION_SAMPLERS

SamplerName = Literal["ddpm", "ddim", "dpm-solver", "euler-maruyama", "reverse-diffusion", "pc", "annealed-langevin"]

#: name -> progressive sampler
SAMPLERS: dict[str, Callable[..., Iterator[dict]]] = {
    "ddpm": ddpm_sample_progressive,
    "ddim": ddim_sample_progressive,
    "dpm-solver": dpm_solver_sample_progressive,
}


SAMPLERS.update(DIFFUSION_SAMPLERS)  # the SDE samplers on the model's VP-SDE view (:mod:`.sde_bridge`)


def sample_progressive(model, diffusion, shape_or_noise, *, sampler: SamplerName = "ddim", **options) -> Iterator[dict]:
    """The progressive sampler called ``sampler`` (see :data:`SAMPLERS`)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler](model, diffusion, shape_or_noise, **options)


def sample(model, diffusion, shape_or_noise, *, sampler: SamplerName = "ddim", **options) -> torch.Tensor:
    """Draw samples with the sampler called ``sampler``; options as that sampler's."""
    return last(sample_progressive(model, diffusion, shape_or_noise, sampler=sampler, **options))


__all__ = ["SAMPLERS", "SamplerName", "sample", "sample_progressive"]
