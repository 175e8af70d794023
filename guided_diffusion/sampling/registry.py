"""The samplers by name: each registered once, with its family, its options and its default grid.

    sample(model, diffusion, shape | x_T, *, sampler="ddim", steps=None, y=None, guidance=None,
           generator=None, progress=True, callback=None, device=None, **options) -> Tensor

is the boundary: it checks the options against the sampler's :class:`SamplerSpec`, reads the
respacing spec ``steps`` once into a :class:`~.grid.TimeGrid` (:func:`time_grid`, which a command
may call early to fail on a bad spec before any work), takes x_T (or draws x_T ~ N(0, I) with
``generator``), checks the labels, and calls the sampler function

    function(model, diffusion, x_T, grid, *, y, guidance, generator, progress, callback,
             clip_denoised=True, denoised_fn=None, model_kwargs=None, **options) -> Tensor

Families (:data:`SamplerFamily`): ``"diffusion"``, the samplers of the discrete process (DDPM
ancestral, DDIM, DPM-Solver++); ``"sde"``, the fixed-grid samplers of a score model
(:data:`~..sde.registry.SCORE_SAMPLERS`) driving the DDPM model through its VP-SDE view
(:mod:`.sde_bridge`).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Literal, Mapping, Optional

import torch

from ..diffusion import GaussianDiffusion
from ..noise import Generators, randn
from ..sampler_protocol import ShapeOrNoise, StepCallback, check_labels, model_device
from ..sde.registry import SCORE_SAMPLERS
from .ancestral import ddpm_sample
from .ddim import ddim_sample
from .dpm_solver import dpm_solver_sample
from .grid import PlainCount, Steps, TimeGrid, parse_steps
from .sde_bridge import on_diffusion

SamplerFamily = Literal["diffusion", "sde"]

#: The keywords every sampler function takes beyond ``(model, diffusion, x_T, grid, *, y, guidance, generator,
#: progress, callback)``: how the model's output is read.
COMMON_OPTIONS = frozenset({"clip_denoised", "denoised_fn", "model_kwargs"})


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler of a DDPM model.

    Args:
        name: its name (``sample(sampler=...)``, ``gd sample --sampler``).
        family: :data:`SamplerFamily`.
        function: the sampler, ``function(model, diffusion, x_T, grid, **keywords) -> Tensor`` (module docstring).
        default_steps: the respacing a command runs when none is given (``gd sample --steps``).
        options: the keywords it takes beyond the common ones (:data:`COMMON_OPTIONS` and the signature's).
        description: one line.
        plain_count: how a plain step count (``"20"`` / ``20``) places its steps (:data:`~.grid.PlainCount`).
        steps_when_none: the respacing of ``steps=None`` (``None``: every step of the given process).
    """

    name: str
    family: SamplerFamily
    function: Callable[..., torch.Tensor]
    default_steps: str
    options: frozenset[str]
    description: str
    plain_count: PlainCount = "strided"
    steps_when_none: Steps = None

    def check_options(self, options: Mapping[str, object]) -> None:
        """A one-line ValueError for the first keyword in ``options`` this sampler does not take: ``"eta is an
        option of ddim; sampler 'pc' does not take it"``, or for a keyword no sampler takes, the ones it does."""
        for key in options:
            if key in self.options or key in COMMON_OPTIONS:
                continue
            owners = [spec.name for spec in SAMPLERS.values() if key in spec.options]
            if owners:
                raise ValueError(f"{key} is an option of {', '.join(owners)}; sampler {self.name!r} does not take it")
            raise ValueError(f"unknown option {key!r} of sampler {self.name!r}; it takes "
                             f"{', '.join(sorted(self.options | COMMON_OPTIONS))}")

    def time_grid(self, steps: Steps | TimeGrid, diffusion: GaussianDiffusion) -> TimeGrid:
        """The grid this sampler walks for ``steps`` on ``diffusion`` (``None``: :attr:`steps_when_none`)."""
        return parse_steps(self.steps_when_none if steps is None else steps, diffusion, self.plain_count)


def _diffusion_family() -> tuple[SamplerSpec, ...]:
    return (
        SamplerSpec("ddpm", "diffusion", ddpm_sample, "250", frozenset(),
                    "DDPM ancestral sampling, x_{t-1} ~ p(x_{t-1} | x_t) (Ho et al. 2020)"),
        SamplerSpec("ddim", "diffusion", ddim_sample, "ddim25", frozenset({"eta"}),
                    "DDIM, deterministic at eta = 0 (Song et al. 2020)"),
        SamplerSpec("dpm-solver", "diffusion", dpm_solver_sample, "20", frozenset({"order"}),
                    "DPM-Solver++ (2M) on the probability-flow ODE, time-quadratic steps (Lu et al. 2022)",
                    plain_count="quadratic", steps_when_none="20"),
    )


#: Options the SDE samplers get on a DDPM model unless the caller sets them: annealed Langevin takes one Langevin
#: step per level, the diffusion's grid being already fine.
_ON_DIFFUSION_DEFAULTS = {"annealed-langevin": {"steps_per_level": 1}}


def _sde_family() -> tuple[SamplerSpec, ...]:
    return tuple(
        SamplerSpec(spec.name, "sde", on_diffusion(spec, **_ON_DIFFUSION_DEFAULTS.get(spec.name, {})), "250",
                    spec.options | {"timesteps"}, f"{spec.description}, on the model's VP-SDE view")
        for spec in SCORE_SAMPLERS.values() if spec.grid == "fixed")


#: name -> :class:`SamplerSpec`, read-only, in the order they are offered.
SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType({spec.name: spec
                                                        for spec in _diffusion_family() + _sde_family()})

#: The registered names as a type (a ``Literal``, so also a command-line choice).
SamplerName = Literal[tuple(SAMPLERS)]


def get_sampler(name: str) -> SamplerSpec:
    """The sampler called ``name``; a one-line ValueError for an unknown name."""
    spec = SAMPLERS.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return spec


def time_grid(steps: Steps | TimeGrid, diffusion: GaussianDiffusion,
              sampler: Optional[SamplerName] = None) -> TimeGrid:
    """The original timesteps a sampler visits for the respacing ``steps`` on ``diffusion``, read once.

    Args:
        steps: a respacing spec (:data:`~.grid.Steps`) or a grid (returned once checked against ``diffusion``).
        diffusion: the process the model was trained with (or one of its respacings).
        sampler: whose rules apply (a plain count, ``None``); without one, a plain count is evenly strided and
            ``None`` is every step.

    A bad spec raises the respacing's one-line ValueError (``cannot parse respacing 'fast': ...``).
    """
    if sampler is None:
        return parse_steps(steps, diffusion)
    return get_sampler(sampler).time_grid(steps, diffusion)


def sample(model: Callable, diffusion: GaussianDiffusion, shape_or_noise: ShapeOrNoise, *,
           sampler: SamplerName = "ddim", steps: Steps | TimeGrid = None, y=None, guidance=None,
           generator: Generators = None, progress: bool = True, callback: StepCallback = None, device=None,
           **options) -> torch.Tensor:
    """Draw samples with the sampler called ``sampler``.

    Args:
        model: ``model(x_t, t, y=None)`` with original timesteps t (eps / x0 network, variance channels if learned).
        diffusion: the process the model was trained with (or one of its respacings).
        shape_or_noise: the batch shape to draw x_T ~ N(0, I) for, or x_T itself.
        sampler: a name of :data:`SAMPLERS`.
        steps: the time grid: a respacing spec (``"250"``, ``"ddim25"``, ``"10,15,20"``; a plain count is placed
            by the sampler's rule, time-quadratic for dpm-solver), a :class:`~.grid.TimeGrid`, or ``None``: the
            sampler's :attr:`SamplerSpec.steps_when_none` (every step, except 20 steps for dpm-solver).
        y: class labels (B,), for the guidance and (if class-conditional) the model.
        guidance: a Guidance object (or a list of them); None = unguided.
        generator: one torch.Generator, or one per sample (a sample then does not depend on its batch).
        progress: show a progress bar.
        callback: called after every step with ``{"i", "t", "sample", "pred_xstart", ...}`` (t: original timestep).
        device: where to draw x_T when a shape is given (default: the model's device).
        options: :data:`COMMON_OPTIONS` and the sampler's :attr:`SamplerSpec.options` (e.g. ``eta`` for ddim).
    """
    spec = get_sampler(sampler)
    spec.check_options(options)
    grid = spec.time_grid(steps, diffusion)
    if isinstance(shape_or_noise, torch.Tensor):
        x = shape_or_noise
    else:
        x = randn(shape_or_noise, generator, device=device or model_device(model))
    return spec.function(model, diffusion, x, grid, y=check_labels(y, x), guidance=guidance, generator=generator,
                         progress=progress, callback=callback, **options)


__all__ = ["SamplerFamily", "SamplerSpec", "COMMON_OPTIONS", "SAMPLERS", "SamplerName", "get_sampler", "time_grid",
           "sample"]
