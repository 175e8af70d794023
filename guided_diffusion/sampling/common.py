"""What the discrete samplers share: one guided prediction per step of the (respaced) diffusion.

A sampler only needs ``model(x_t, t, y=None)``: the prediction step here calls the model through
the (respaced) diffusion, reads its output as p(x_{t-1} | x_t), and hands it to the guidance in
the form the sampler asks for (a mean shift for ancestral steps, an eps shift for DDIM/ODE steps).

Two things serve training-free guidance (:class:`~..guidance.TrainingFreeGuidance`) and nothing else:

- a guidance that ``needs_model_gradient`` gets the model's prediction with its graph to x_t (the model then
  runs under ``enable_grad``, once per step as always; everything the sampler gets back is detached);
- a guidance with ``recurrence`` N_recur > 1 repeats each step: :meth:`GuidedPredictor.step` predicts, lets
  the sampler update x_t -> x_{t-1}, and re-noises x_{t-1} back to x_t by q(x_t | x_{t-1}) (:meth:`renoise`)
  before the next repetition. The ancestral and DDIM samplers walk their steps through it.

Such guidance moves the predicted x_0 with eps held fixed (``shifts_x0``): exact for a sampler whose update
reads the prediction's ``eps`` and ``pred_xstart`` / ``mean`` as given (DDPM, DDIM). A sampler for which it
is not (DPM-Solver++) gives its reason as ``x0_shift_refusal`` and such guidance is refused when the
predictor is made, before any model evaluation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch

from ..diffusion import GaussianDiffusion
from ..diffusion.gaussian import DenoisedFn
from ..guidance import Guidance, NoiseLevel, as_guidance
from ..noise import Generators, randn
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
        generator: the sampler's noise streams (handed to ``guidance.start``: guidance noise per sample; the
            re-noising of a recurrence draws from them too).
        x0_shift_refusal: why this sampler cannot take guidance that moves x_0 with eps held fixed (module
            docstring), as the one-line error that refuses it; ``None``: it can (DDPM, DDIM).
    """

    model: Callable
    process: GaussianDiffusion
    y: Optional[torch.Tensor] = None
    guidance: Optional[Guidance] = None
    clip_denoised: bool = True
    denoised_fn: Optional[DenoisedFn] = None
    model_kwargs: Optional[dict] = None
    generator: Generators = None
    x0_shift_refusal: Optional[str] = None

    def __post_init__(self):
        self.guidance = as_guidance(self.guidance).start(self.generator)
        active = self.guidance.active
        if self.x0_shift_refusal is not None and active and self.guidance.shifts_x0:
            raise ValueError(self.x0_shift_refusal)
        #: N_recur: how often each step is made (1: once, every guidance but training-free guidance).
        self.recurrence = int(self.guidance.recurrence) if active else 1
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
        if guidance.active and guidance.needs_model_gradient:
            return self._predict_with_model_gradient(model, guidance, x, t, form)
        with torch.no_grad():
            out = self.process.p_mean_variance(model, x, t, y=self.model_y, clip_denoised=self.clip_denoised,
                                               denoised_fn=self.denoised_fn, model_kwargs=self.model_kwargs)
        if not guidance.active:
            return out
        return self._condition(guidance, out, x, t, form)

    def _condition(self, guidance: Guidance, out: dict, x: torch.Tensor, t: torch.Tensor, form: str) -> dict:
        if form == "mean":
            return guidance.condition_mean(self.process, out, x, t, self.y)
        return guidance.condition_eps(self.process, out, x, t, self.y)

    def _predict_with_model_gradient(self, model: Callable, guidance: Guidance, x: torch.Tensor, t: torch.Tensor,
                                     form: str) -> dict:
        """:meth:`predict` for guidance that differentiates the model's x_0 with respect to x_t: the one model call
        keeps its graph; the guidance gets ``x`` requiring grad and ``raw_pred_xstart`` (the model's x_0 before
        ``denoised_fn`` and clipping, which would cut the gradient); the sampler gets detached tensors."""
        process = self.process
        process.check_timesteps(t, x.shape[0])
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            output = process.call_model(model, x_in, t, self.model_y, self.model_kwargs)
            out = process.interpret_output(output, x_in, t, clip_denoised=self.clip_denoised,
                                           denoised_fn=self.denoised_fn)
            raw = process.interpret_output(output, x_in, t, clip_denoised=False)["pred_xstart"]
        out = {key: _detached(value) for key, value in out.items()}
        out["raw_pred_xstart"] = raw
        out = self._condition(guidance, out, x_in, t, form)
        return {key: _detached(value) for key, value in out.items() if key != "raw_pred_xstart"}

    def renoise(self, x_prev: torch.Tensor, index: int) -> torch.Tensor:
        """x_t = sqrt(alpha_t) x_{t-1} + sqrt(1 - alpha_t) z, z ~ N(0, I) from the run's noise streams: a draw of
        q(x_t | x_{t-1}) for step ``index`` of the process, alpha_t = abar_t / abar_{t-1} = 1 - beta_t of its grid."""
        beta = float(self.process.betas[index])
        z = randn(x_prev.shape, self.generator, x_prev.device, x_prev.dtype)
        return (1.0 - beta) ** 0.5 * x_prev + beta ** 0.5 * z

    def step(self, x: torch.Tensor, index: int, form: Literal["mean", "eps"],
             update: Callable[[dict, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """One step of a sampler from x_t at step ``index``, made :attr:`recurrence` times: predict (``form`` as in
        :meth:`predict`), ``update(out, x_t) -> x_{t-1}`` (the sampler's own update), and before each repetition
        re-noise x_{t-1} to a new x_t (:meth:`renoise`). Returns x_{t-1} and the last prediction; with one
        recurrence this is exactly ``update(predict(x, index, form), x)``."""
        out = self.predict(x, index, form)
        x_prev = update(out, x)
        for _ in range(1, self.recurrence):
            x = self.renoise(x_prev, index)
            out = self.predict(x, index, form)
            x_prev = update(out, x)
        return x_prev, out


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value
