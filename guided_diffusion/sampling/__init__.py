"""Samplers and guidance. Every sampler has one signature and drives every model and guidance:

    sampler(model, diffusion, shape | x_T, *, y=None, guidance=None, steps=..., generator=None,
            progress=True, **options) -> Tensor

with a ``*_progressive`` variant that yields each step. Samplers own respacing; models see only
original timesteps. The discrete samplers (DDPM ancestral, DDIM, DPM-Solver++) live here; the SDE
family of :mod:`guided_diffusion.sde` joins :data:`SAMPLERS` through :mod:`.sde_bridge`, and
:mod:`.controllable` (inpainting, colorization, interpolation) works with both. Guidance objects
are :mod:`guided_diffusion.guidance` (re-exported). Plain PyTorch: nothing here imports Lightning.
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
from ..sampler_protocol import last, randn
from .ancestral import ddpm_sample, ddpm_sample_progressive
from .common import GuidedPredictor
from .ddim import ddim_invert, ddim_invert_progressive, ddim_sample, ddim_sample_progressive, ddim_step
from .dpm_solver import dpm_solver_sample, dpm_solver_sample_progressive
from .samplers import SAMPLERS, SamplerName, sample, sample_progressive
from .controllable import (
    COLOR_BASIS,
    SDE_SAMPLERS,
    InpaintedModel,
    Inpainting,
    colorization,
    colorize,
    colorize_progressive,
    from_decoupled,
    inpaint,
    inpaint_progressive,
    interpolate,
    slerp,
    to_decoupled,
)

__all__ = [
    "SAMPLERS", "SamplerName", "sample", "sample_progressive", "GuidedPredictor", "randn",
    "ddpm_sample", "ddpm_sample_progressive", "ddim_sample", "ddim_sample_progressive", "ddim_step",
    "ddim_invert", "ddim_invert_progressive", "dpm_solver_sample", "dpm_solver_sample_progressive",
    "Guidance", "ClassifierGuidance", "ClassifierFreeGuidance", "GuidanceChain", "as_guidance", "check_scale",
    "GuidanceScale", "last",
    "COLOR_BASIS", "Inpainting", "InpaintedModel", "colorization", "to_decoupled", "from_decoupled", "slerp",
    "interpolate", "inpaint", "inpaint_progressive", "colorize", "colorize_progressive", "SDE_SAMPLERS",
]
