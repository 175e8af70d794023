"""Samplers and guidance. Every sampler has one signature and drives every model and guidance:

    sampler(model, diffusion, shape | x_T, *, y=None, guidance=None, steps=..., generator=None,
            progress=True, **options) -> Tensor

with a ``*_progressive`` variant that yields each step. Samplers own respacing; models see only
original timesteps. Plain PyTorch: nothing here imports Lightning.
"""
from __future__ import annotations

from typing import Callable, Iterator, Literal

import torch

from .ancestral import ddpm_sample, ddpm_sample_progressive
from .common import Denoiser, last, randn
from .ddim import ddim_invert, ddim_invert_progressive, ddim_sample, ddim_sample_progressive, ddim_step
from .dpm_solver import dpm_solver_sample, dpm_solver_sample_progressive
from .guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Guidance,
    GuidanceChain,
    as_guidance,
    GuidanceScale,
    check_scale,
)

SamplerName = Literal["ddpm", "ddim", "dpm-solver", "euler-maruyama", "reverse-diffusion", "pc", "annealed-langevin"]

#: name -> progressive sampler
SAMPLERS: dict[str, Callable[..., Iterator[dict]]] = {
    "ddpm": ddpm_sample_progressive,
    "ddim": ddim_sample_progressive,
    "dpm-solver": dpm_solver_sample_progressive,
}


def _score_sde_sampler(name: str) -> Callable[..., Iterator[dict]]:
    """A sampler of :mod:`guided_diffusion.sde` on the model's VP-SDE view (imported on use: sde builds on sampling)."""
    def progressive(model, diffusion, shape_or_noise, **options):
        from ..sde.bridge import DIFFUSION_SAMPLERS

        return DIFFUSION_SAMPLERS[name](model, diffusion, shape_or_noise, **options)

    return progressive


SAMPLERS.update({name: _score_sde_sampler(name)
                 for name in ("euler-maruyama", "reverse-diffusion", "pc", "annealed-langevin")})


def sample_progressive(model, diffusion, shape_or_noise, *, sampler: SamplerName = "ddim", **options) -> Iterator[dict]:
    """The progressive sampler called ``sampler`` (see :data:`SAMPLERS`)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler](model, diffusion, shape_or_noise, **options)


def sample(model, diffusion, shape_or_noise, *, sampler: SamplerName = "ddim", **options) -> torch.Tensor:
    """Draw samples with the sampler called ``sampler``; options as that sampler's."""
    return last(sample_progressive(model, diffusion, shape_or_noise, sampler=sampler, **options))


__all__ = [
    "SAMPLERS", "SamplerName", "sample", "sample_progressive", "Denoiser", "randn",
    "ddpm_sample", "ddpm_sample_progressive", "ddim_sample", "ddim_sample_progressive", "ddim_step",
    "ddim_invert", "ddim_invert_progressive", "dpm_solver_sample", "dpm_solver_sample_progressive",
    "Guidance", "ClassifierGuidance", "ClassifierFreeGuidance", "GuidanceChain", "as_guidance", "check_scale",
    "GuidanceScale",
]
