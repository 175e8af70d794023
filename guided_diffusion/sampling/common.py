"""What the discrete samplers share: one guided prediction per step of the (respaced) diffusion.

A sampler only needs ``model(x_t, t, y=None)``: the prediction step here calls the model through
the (respaced) diffusion, reads its output as p(x_{t-1} | x_t), and hands it to the guidance in
the form the sampler asks for (a mean shift for ancestral steps, an eps shift for DDIM/ODE steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch

from ..diffusion import GaussianDiffusion
from ..diffusion.gaussian import DenoisedFn
from ..guidance import Guidance, NoiseLevel, as_guidance
from ..sampler_protocol import model_takes_labels


@dataclass
class GuidedPredictor:
    """A model, its (respaced) diffusion and the guidance, seen as one prediction per step.

    Args:
        model: ``model(x_t, t, y=None)`` with original timesteps t.
        process: the diffusion the sampler walks (already respaced).
        y: class labels (B,), given to the guidance, and to the model if it is class-conditional.
        guidance: what corrects the prediction (``None`` = unguided).
        clip_denoised: clip predicted x_0 to [-1, 1].
        denoised_fn: applied to predicted x_0 before clipping.
        model_kwargs: extra keyword arguments for the model (e.g. ``low_res``).
    """

    model: Callable
    process: GaussianDiffusion
    y: Optional[torch.Tensor] = None
    guidance: Optional[Guidance] = None
    clip_denoised: bool = True
    denoised_fn: Optional[DenoisedFn] = None
    model_kwargs: Optional[dict] = None

    def __post_init__(self):
        self.guidance = as_guidance(self.guidance).start()
        self.network = self.model
        self.model = self.guidance.wrap_model(self.network)
        self.model_y = self.y if model_takes_labels(self.model) else None

    def level(self, index: int) -> NoiseLevel:
        """The noise level of step ``index``, from host numbers (no device read)."""
        t = int(self.process.timestep_map[index])
        abar = float(self.process.alphas_cumprod[index])
        return NoiseLevel(t=float(t), sigma=math.sqrt((1 - abar) / abar),
                          tau=t / max(self.process.original_num_timesteps - 1, 1))

    def predict(self, x: torch.Tensor, index: int, form: Literal["mean", "eps"]) -> dict:
        """p(x_{t-1} | x_t) at step ``index`` of the process, guided in the given form."""
        t = torch.full((x.shape[0],), index, dtype=torch.long, device=x.device)
        guidance, model = self.guidance, self.model
        if guidance.step_dependent:
            guidance = guidance.at(self.level(index))
            model = guidance.wrap_model(self.network)
        with torch.no_grad():
            out = self.process.p_mean_variance(model, x, t, y=self.model_y, clip_denoised=self.clip_denoised,
                                               denoised_fn=self.denoised_fn, model_kwargs=self.model_kwargs)
        if not guidance.active:
            return out
        if form == "mean":
            return guidance.condition_mean(self.process, out, x, t, self.y)
        return guidance.condition_eps(self.process, out, x, t, self.y)
