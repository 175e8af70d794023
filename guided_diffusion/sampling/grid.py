"""Time grids: the original timesteps a sampler visits, made once from a respacing spec.

A grid is the set of original timesteps t_0 < t_1 < ... < t_{K-1} (those the network was trained on)
that a sampler walks from t_{K-1} down to t_0. It is made from a respacing spec at the boundary
(:func:`~.registry.sample`, :func:`~.registry.time_grid`, :func:`~.ddim.ddim_invert`), and the
sampler functions take the grid, never a spec. A sampler reads it as a process
(:meth:`TimeGrid.process`): the diffusion restricted to the kept steps, with

    beta'_k = 1 - abar_{t_k} / abar_{t_{k-1}}   (abar before t_0 = 1),

so the marginals q(x_t | x_0) at the kept timesteps are those of the trained process, and the model
still sees original timesteps. A plain count is placed evenly strided (``"strided"``, the reference's
respacing) or time-quadratically (``"quadratic"``: t_k = (k / (K - 1))^2 (T - 1), DPM-Solver's
placement, the spec ``"quadK"``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np

from ..diffusion import GaussianDiffusion

#: A respacing spec as :meth:`GaussianDiffusion.respace` reads it: ``"250"`` / ``250`` (evenly strided),
#: ``"10,15,20"`` / ``[10, 15, 20]`` (counts per section), ``"ddim25"``, ``"quad20"``, ``"logsnr20"``;
#: ``None`` / ``""``: every step of the given process.
Steps = Optional[str | int | Sequence[int]]
#: How a plain step count (``"20"`` or ``20``) places its steps.
PlainCount = Literal["strided", "quadratic"]


@dataclass(frozen=True)
class TimeGrid:
    """The original timesteps a sampler visits.

    Args:
        timesteps: the kept original timesteps, strictly increasing.
        respaced: ``False`` for the given process walked as it is (every one of its steps, its own betas);
            ``True`` for the process rebuilt on ``timesteps`` (betas recomputed from abar as above).
    """

    timesteps: tuple[int, ...]
    respaced: bool = True

    def __post_init__(self):
        steps = tuple(int(t) for t in self.timesteps)
        if not steps or steps[0] < 0 or any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"a time grid is a non-empty, strictly increasing sequence of timesteps >= 0, "
                             f"got {list(self.timesteps)[:8]}")
        object.__setattr__(self, "timesteps", steps)

    def __len__(self) -> int:
        return len(self.timesteps)

    def indices(self, diffusion: GaussianDiffusion) -> np.ndarray:
        """The step of ``diffusion`` (0 .. T - 1) at each grid timestep; a ValueError if it has no such step."""
        steps = diffusion.timestep_map.numpy()
        timesteps = np.asarray(self.timesteps)
        index = np.searchsorted(steps, timesteps)
        if (index >= len(steps)).any() or not np.array_equal(steps[np.minimum(index, len(steps) - 1)], timesteps):
            raise ValueError(f"the time grid's timesteps are not all steps of the diffusion (grid "
                             f"{list(self.timesteps)[:8]}..., diffusion {steps[:8].tolist()}...)")
        if not self.respaced and len(index) != len(steps):
            raise ValueError(f"this time grid is every step of a {len(self)}-step process, not of this "
                             f"{len(steps)}-step one")
        return index

    def process(self, diffusion: GaussianDiffusion) -> GaussianDiffusion:
        """The diffusion a sampler walks on this grid: ``diffusion`` itself, or its subsequence of the kept steps."""
        index = self.indices(diffusion)
        return diffusion.subsequence(index.tolist()) if self.respaced else diffusion


def place_plain_count(steps: Steps, plain_count: PlainCount) -> Steps:
    """``steps`` with a plain count rewritten for the placement: ``"quad20"`` for 20 under ``"quadratic"``."""
    if plain_count == "quadratic" and (isinstance(steps, int) or (isinstance(steps, str) and steps.strip().isdigit())):
        return f"quad{int(steps)}"
    return steps


def parse_steps(steps: Steps | TimeGrid, diffusion: GaussianDiffusion, plain_count: PlainCount = "strided") -> TimeGrid:
    """The grid of a respacing spec on ``diffusion``, the spec read once (by :meth:`GaussianDiffusion.respace`).

    Args:
        steps: a respacing spec (:data:`Steps`; ``None`` / ``""``: every step of ``diffusion``), or a grid,
            returned once checked against ``diffusion``.
        diffusion: the process the grid is made for.
        plain_count: the placement of a plain count (``"20"`` / ``20``).

    A bad spec raises the respacing's one-line ValueError.
    """
    if isinstance(steps, TimeGrid):
        steps.indices(diffusion)
        return steps
    steps = place_plain_count(steps, plain_count)
    if steps is None or (isinstance(steps, str) and steps == ""):
        return TimeGrid(tuple(diffusion.timestep_map.tolist()), respaced=False)
    return TimeGrid(tuple(diffusion.respace(steps).timestep_map.tolist()))


__all__ = ["Steps", "PlainCount", "TimeGrid", "place_plain_count", "parse_steps"]
