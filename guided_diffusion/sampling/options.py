"""The sampler option group: which sampler a run uses and how, declared once.

``gd sample``, ``gd upsample``, ``gd sweep`` and ``gd demo`` take this group (``--sampler``, ``--steps``,
``--eta``, ``--order``, ``--clip_denoised``); :meth:`SamplerOptions.kwargs` gives the keywords of
:func:`guided_diffusion.sampling.sample`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Optional

from ..diffusion import GaussianDiffusion
from .grid import TimeGrid
from .registry import SamplerName, get_sampler


@dataclass(frozen=True)
class SamplerOptions:
    """Sampler: how the reverse process is walked.

    Args:
        sampler: ``ddim``, ``ddpm``, ``dpm-solver``, or a score-SDE sampler (``pc``, ``euler-maruyama``,
            ``reverse-diffusion``, ``annealed-langevin``) on the model's VP-SDE view.
        steps: the time grid: a respacing (``"250"``, ``"ddim25"``, ``"10,15,20"``; for dpm-solver a plain count
            places the steps time-quadratically); default: ``ddim25`` for ddim, ``250`` for ddpm, 20 for
            dpm-solver, 250 for the SDE samplers.
        eta: DDIM eta in [0, 1] (0 = deterministic); DDIM only.
        order: DPM-Solver++ order (1 = DDIM, 2 = 2M, the default); dpm-solver only.
        clip_denoised: clip the predicted x_0 to [-1, 1] at every step.
    """

    sampler: SamplerName = "ddim"
    steps: Optional[str] = None
    eta: float = 0.0
    order: Optional[Literal[1, 2]] = None
    clip_denoised: bool = True

    def __post_init__(self):
        spec = get_sampler(self.sampler)
        spec.check_options({name: value for name, value in (("eta", self.eta), ("order", self.order)) if value})
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"DDIM eta must lie in [0, 1], got {self.eta}")
        if self.order is not None and self.order not in (1, 2):
            raise ValueError(f"DPM-Solver++ order must be 1 or 2, got {self.order}")
        if self.steps is not None:
            object.__setattr__(self, "steps", str(self.steps))

    @property
    def resolved_steps(self) -> str:
        """The respacing the run uses (the sampler's default when none is given)."""
        return get_sampler(self.sampler).default_steps if self.steps is None else self.steps

    def grid(self, diffusion: GaussianDiffusion) -> TimeGrid:
        """The time grid of :attr:`resolved_steps` on ``diffusion`` (a bad respacing fails here, in one line)."""
        return get_sampler(self.sampler).time_grid(self.resolved_steps, diffusion)

    def kwargs(self, diffusion: Optional[GaussianDiffusion] = None) -> dict[str, Any]:
        """The keyword options of :func:`guided_diffusion.sampling.sample` (with ``diffusion``: the steps as the time
        grid on it, read once here rather than at every call)."""
        steps = self.resolved_steps if diffusion is None else self.grid(diffusion)
        options: dict[str, Any] = dict(sampler=self.sampler, steps=steps, clip_denoised=self.clip_denoised)
        if "eta" in get_sampler(self.sampler).options:
            options["eta"] = self.eta
        if self.order is not None:
            options["order"] = self.order
        return options

    def identity(self) -> dict[str, Any]:
        """What a sample run's identity records of its sampler (``run.json``)."""
        identity = dict(sampler=self.sampler, steps=self.resolved_steps, eta=self.eta,
                        clip_denoised=self.clip_denoised)
        if self.order is not None:
            identity["order"] = self.order
        return identity

    def replace(self, **changes: Any) -> "SamplerOptions":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


__all__ = ["SamplerOptions"]
