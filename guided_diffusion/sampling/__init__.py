"""Samplers and guidance. Every sampler is registered once (:mod:`.registry`) and called through one boundary:

    sample(model, diffusion, shape | x_T, *, sampler="ddim", steps=None, y=None, guidance=None, generator=None,
           progress=True, callback=None, **options) -> Tensor

which reads the respacing ``steps`` once into a :class:`TimeGrid` of original timesteps (:func:`time_grid`)
and hands it to the sampler function ``(model, diffusion, x_T, grid, *, ...)``; models see only original
timesteps, and ``callback`` sees every step. The discrete samplers (DDPM ancestral, DDIM, DPM-Solver++)
live here; the fixed-grid samplers of :mod:`guided_diffusion.sde` join :data:`SAMPLERS` through
:mod:`.sde_bridge`, and :mod:`.controllable` (inpainting, colorization, interpolation) works with both.
Guidance objects are :mod:`guided_diffusion.guidance` (re-exported). Plain PyTorch: nothing here imports
Lightning.
"""
from __future__ import annotations

from ..guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Guidance,
    GuidanceChain,
    GuidanceScale,
    as_guidance,
    check_scale,
)
from ..noise import randn
from ..sampler_protocol import StepCallback
from .ancestral import ddpm_sample
from .common import GuidedPredictor
from .ddim import ddim_invert, ddim_sample, ddim_step
from .dpm_solver import dpm_solver_sample
from .grid import Steps, TimeGrid
from .registry import SAMPLERS, SamplerFamily, SamplerName, SamplerSpec, get_sampler, sample, time_grid
from .controllable import (
    COLOR_BASIS,
    SDE_SAMPLERS,
    InpaintedModel,
    Inpainting,
    colorization,
    colorize,
    from_decoupled,
    inpaint,
    interpolate,
    slerp,
    to_decoupled,
)

__all__ = [
    "SAMPLERS", "SamplerFamily", "SamplerName", "SamplerSpec", "get_sampler", "sample", "time_grid", "TimeGrid",
    "Steps", "StepCallback", "GuidedPredictor", "randn",
    "ddpm_sample", "ddim_sample", "ddim_step", "ddim_invert", "dpm_solver_sample",
    "Guidance", "ClassifierGuidance", "ClassifierFreeGuidance", "GuidanceChain", "as_guidance", "check_scale",
    "GuidanceScale",
    "COLOR_BASIS", "Inpainting", "InpaintedModel", "colorization", "to_decoupled", "from_decoupled", "slerp",
    "interpolate", "inpaint", "colorize", "SDE_SAMPLERS",
]
