"""The samplers of a score model by name, each declared once with what it takes.

Every one has the signature of :mod:`.samplers`:

    sampler(score_model, sde, shape | x_T, *, y=None, guidance=None, generator=None, progress=True,
            callback=None, device=None, <grid keywords>, **options) -> Tensor

A ``"fixed"``-grid sampler walks a decreasing time grid 1 = t_0 > ... > t_K (its grid keywords:
``steps``, ``eps``, ``times``, and ``sigmas`` for annealed Langevin), so it also drives a DDPM model
through the model's VP-SDE view (``guided_diffusion.sampling`` registers it by the same name) and
takes inpainting guidance; the ``"adaptive"`` probability-flow ODE lets its solver choose the times
from 1 down to ``eps`` (deterministic, with a right-hand side that must not be random).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Literal, Mapping

import torch

from .ode import ode_sample
from .samplers import annealed_langevin_sample, euler_maruyama_sample, pc_sample, reverse_diffusion_sample

ScoreGrid = Literal["fixed", "adaptive"]


@dataclass(frozen=True)
class ScoreSamplerSpec:
    """One sampler of a score model.

    Args:
        name: its name (``--sampler``).
        function: the sampler, signature as in the module docstring.
        grid: ``"fixed"`` (a time grid made from ``steps`` / ``eps`` / ``times``) or ``"adaptive"``.
        options: the keywords it takes beyond the common signature and its grid keywords.
        description: one line.
    """

    name: str
    function: Callable[..., torch.Tensor]
    grid: ScoreGrid
    options: frozenset[str]
    description: str


_PC_OPTIONS = frozenset({"corrector", "snr", "corrector_steps", "langevin_norms", "denoise"})

#: name -> sampler of a score model, in the order they are offered.
SCORE_SAMPLERS: Mapping[str, ScoreSamplerSpec] = MappingProxyType({spec.name: spec for spec in (
    ScoreSamplerSpec("pc", pc_sample, "fixed", _PC_OPTIONS | {"predictor"},
                     "predictor-corrector: reverse-diffusion predictor and Langevin corrector (Song et al. 2021)"),
    ScoreSamplerSpec("euler-maruyama", euler_maruyama_sample, "fixed", frozenset({"denoise"}),
                     "Euler-Maruyama steps of the reverse SDE"),
    ScoreSamplerSpec("reverse-diffusion", reverse_diffusion_sample, "fixed", frozenset({"denoise"}),
                     "the reverse-diffusion predictor alone (ancestral sampling of any SDE)"),
    ScoreSamplerSpec("annealed-langevin", annealed_langevin_sample, "fixed",
                     frozenset({"steps_per_level", "step_size", "denoise"}),
                     "annealed Langevin dynamics over the noise levels (Song & Ermon 2019)"),
    ScoreSamplerSpec("ode", ode_sample, "adaptive", frozenset({"rtol", "atol", "method", "denoise"}),
                     "the probability-flow ODE with an adaptive Runge-Kutta solver"),
)})

#: The names of :data:`SCORE_SAMPLERS` as a type.
ScoreSamplerName = Literal[tuple(SCORE_SAMPLERS)]

__all__ = ["ScoreGrid", "ScoreSamplerSpec", "SCORE_SAMPLERS", "ScoreSamplerName"]
