"""Reverse-SDE samplers: Euler–Maruyama, reverse diffusion, Langevin correction, and annealed Langevin.

All share one signature (k-diffusion's, with a score model in place of a denoiser):

    sampler(score_model, sde, shape | x_T, *, y=None, guidance=None, steps=..., generator=None,
            progress=True, callback=None, **options) -> Tensor

``callback`` is called after every step with ``{"i", "t", "sample", "pred_xstart"}`` (t continuous).
``sde=None`` takes the score model's own SDE. The reverse SDE (Anderson 1982; Song et al. 2021)

    dx = [f(t) x - g(t)^2 (grad log p_t(x) + s grad log p_t(y | x))] dt + g(t) dw_bar

is integrated from t = 1 to ``eps`` on a uniform grid of ``steps`` steps (or the explicit
``times``), one predictor step per grid interval, optionally preceded by corrector steps:

- ``euler_maruyama``: x <- x - [f x - g^2 score] h + g sqrt(h) z,  h = t - t_next;
- ``reverse_diffusion`` (Song et al. eq. 46): with the exact forward transition
  x_t = r x_{t_next} + G z of the step, x <- x - (r - 1) x + G^2 score + G z; for VP this is
  x <- (2 - sqrt(1 - beta)) x + beta score + sqrt(beta) z, for VE x <- x + (sigma_t^2 - sigma_next^2) score + ...;
- ``langevin`` corrector (Algorithm 4 of Song et al.): x <- x + e score + sqrt(2 e) z with
  e = 2 alpha (r_snr |z| / |score|)^2, alpha = r^2 of the step (1 for VE). The norms are per sample
  by default (the reference averages them over the batch, which makes a sample depend on its
  batch; ``langevin_norms="batch"`` does that, and is the robust choice in very low dimension).

  What the rule does, in closed form: on a Gaussian p_t = N(mu, s^2 I) the corrector alone is unadjusted
  Langevin with stationary variance v = s^2 / (1 - e / (2 s^2)); with |score| = |x - mu| / s^2 and norms that
  concentrate (|z|^2 = D, |x - mu|^2 = D v) this gives v = s^2 (1 + r_snr^2), sqrt(1 + r^2) s in std, a bias
  the next predictor steps shrink. The rule assumes that concentration. In very low dimension it fails for
  per-sample norms: a sample near a mode has |score| ~ 0, gets a step of many s^2 and is thrown out, so PC
  samples of 2-d data come out several times too wide, while the predictors alone and batch norms do not.
  In image dimensions per-sample and batch norms agree and give sqrt(1 + r^2) s.

Guidance enters only through the score (:class:`~.models.GuidedScore`): classifier guidance adds
``guidance.score_shift(x, t_model, y)``, classifier-free guidance wraps the network. After the last
step, ``denoise`` replaces x by Tweedie's E[x_0 | x_eps] = (x + sigma^2 score) / a.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch

from ..noise import Generators, randn
from ..sampler_protocol import ShapeOrNoise, StepCallback, check_labels, model_device, steps_with_progress
from .models import GuidedScore, ScoreModel, check_sde, tweedie_x0
from .sdes import SDE, as_time, broadcast

Predictor = Literal["euler_maruyama", "reverse_diffusion", "none"]
Corrector = Literal["langevin", "none"]
NormKind = Literal["sample", "batch"]


# ---------------------------------------------------------------------------------------------- plumbing
def time_grid(sde: SDE, steps: Optional[int], eps: Optional[float], times: Optional[Sequence[float]]) -> torch.Tensor:
    """The decreasing float64 times t_0 = 1 > ... > t_K = eps (or the given ``times``)."""
    if times is not None:
        grid = as_time(times).reshape(-1).cpu()
        if len(grid) < 1 or (grid.diff() >= 0).any() or grid.min() < 0 or grid.max() > 1:
            raise ValueError("times must be a non-empty, strictly decreasing sequence in [0, 1]")
        return grid
    steps = sde.N - 1 if steps is None else steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    eps = sde.eps if eps is None else float(eps)
    if not 0 <= eps < 1:
        raise ValueError(f"eps must lie in [0, 1), got {eps}")
    return torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)


def start(score_model, sde: SDE, shape_or_noise: ShapeOrNoise, y, generator: Generators, device):
    """x_1 from the prior (or the given tensor) and labels checked against the batch."""
    if isinstance(shape_or_noise, torch.Tensor):
        x = shape_or_noise
    else:
        network = getattr(score_model, "network", score_model)
        x = sde.prior_sample(shape_or_noise, generator, device=device or model_device(network))
    return x, check_labels(y, x)


def check_snr(snr: float) -> float:
    if not isinstance(snr, (int, float)) or not math.isfinite(snr) or snr <= 0:
        raise ValueError(f"the Langevin signal-to-noise ratio snr must be a positive number, got {snr!r}")
    return float(snr)


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(str, choices))}")


def langevin_step(score_fn: GuidedScore, x: torch.Tensor, t: torch.Tensor, snr: float, alpha: torch.Tensor,
                  generator: Generators, norms: NormKind = "sample") -> torch.Tensor:
    """One Langevin corrector step at time t with step size set by the signal-to-noise ratio."""
    score = score_fn(x, t)
    z = randn(x.shape, generator, x.device, x.dtype)
    score_norm = score.reshape(len(x), -1).norm(dim=1)
    noise_norm = z.reshape(len(x), -1).norm(dim=1)
    if norms == "batch":
        score_norm, noise_norm = score_norm.mean().expand(len(x)), noise_norm.mean().expand(len(x))
    score_norm = score_norm.clamp(min=1e-20)
    step = 2 * alpha.to(x.dtype) * (snr * noise_norm / score_norm) ** 2
    return x + broadcast(step, x) * score + broadcast((2 * step).sqrt(), x) * z


def predictor_step(kind: Predictor, sde: SDE, x: torch.Tensor, score: torch.Tensor, t, t_next,
                   generator: Generators) -> torch.Tensor:
    """One reverse step t -> t_next (< t) of the chosen predictor."""
    if kind == "none":
        return x
    z = randn(x.shape, generator, x.device, x.dtype)
    if kind == "euler_maruyama":
        h = float(t - t_next)
        g = broadcast(sde.diffusion(t), x)
        return x - (sde.drift(x, t) - g ** 2 * score) * h + g * math.sqrt(h) * z
    r, big_g = sde.transition(t_next, t)
    r, big_g = broadcast(r, x), broadcast(big_g, x)
    return x - (r - 1) * x + big_g ** 2 * score + big_g * z


# ---------------------------------------------------------------------------------------------- PC sampler
def pc_sample(score_model: ScoreModel, sde: Optional[SDE], shape_or_noise: ShapeOrNoise, *,
              y: Optional[torch.Tensor] = None, guidance=None, steps: Optional[int] = None,
              predictor: Predictor = "reverse_diffusion", corrector: Corrector = "langevin",
              snr: float = 0.16, corrector_steps: int = 1, langevin_norms: NormKind = "sample",
              eps: Optional[float] = None, times: Optional[Sequence[float]] = None, denoise: bool = True,
              generator: Generators = None, progress: bool = True, callback: StepCallback = None,
              device=None) -> torch.Tensor:
    """Predictor–corrector sampling of the reverse SDE (Algorithms 2–3 of Song et al. 2021).

    Args:
        score_model: ``score(x, t, y)``; ``sde``: its SDE (None: ``score_model.sde``).
        shape_or_noise: the batch shape to draw x_1 from the prior for, or x_1 itself.
        y, guidance: labels and a Guidance object (or list); see the module docstring.
        steps: predictor steps from t = 1 to ``eps`` (default N - 1, one per model timestep).
        predictor / corrector: ``euler_maruyama`` | ``reverse_diffusion`` | ``none``, ``langevin`` | ``none``.
        snr: the corrector's signal-to-noise ratio r (> 0; 0.16 for VE on CIFAR-10 in the paper).
        corrector_steps: Langevin steps per noise level (M).
        langevin_norms: ``"sample"``: |z| and |score| of each sample (Algorithm 4, batch-independent);
            ``"batch"``: their batch means (the reference code). In high dimension the two agree
            (both norms concentrate); in low dimension a sample near a mode has |score| ~ 0 and gets
            a huge step (2-d toy data come out far too wide), so use ``"batch"`` there; see the module
            docstring for the closed form.
        eps: the last time (default ``sde.eps``); ``times``: an explicit decreasing grid instead.
        denoise: end with Tweedie's denoising step at t = eps.
        generator: one torch.Generator, or one per sample (a sample then ignores its batch).
        progress: show a progress bar.
        callback: called once per grid time with ``{"i", "t", "sample", "pred_xstart"}``: the state after the
            step from ``t`` (after the final denoising at the last time) and the Tweedie estimate of x_0 made there.
        device: where to draw x_1 when a shape is given (default: the network's device).

    Returns the sample at the last grid time (denoised if ``denoise``).
    """
    _check_choice("predictor", predictor, ("euler_maruyama", "reverse_diffusion", "none"))
    _check_choice("corrector", corrector, ("langevin", "none"))
    _check_choice("langevin_norms", langevin_norms, ("sample", "batch"))
    if corrector == "langevin":
        snr = check_snr(snr)
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative integer, got {corrector_steps!r}")
    sde = check_sde(score_model, sde)
    grid = time_grid(sde, steps, eps, times)
    x, y = start(score_model, sde, shape_or_noise, y, generator, device)
    score_fn = GuidedScore(score_model, y, guidance, generator)
    desc = predictor if corrector == "none" else f"{predictor}+{corrector}"
    for k in steps_with_progress(range(len(grid)), progress, desc):
        t = grid[k]
        if k + 1 < len(grid):
            t_next = grid[k + 1]
            if corrector == "langevin":
                alpha = sde.transition(t_next, t)[0] ** 2
                for _ in range(corrector_steps):
                    x = langevin_step(score_fn, x, t, snr, alpha, generator, langevin_norms)
            score = score_fn(x, t)
            x0 = tweedie_x0(x, score, sde, t)
            x = predictor_step(predictor, sde, x, score, t, t_next, generator)
        else:
            x0 = tweedie_x0(x, score_fn(x, t), sde, t)
            x = x0 if denoise else x
        if callback is not None:
            callback({"i": k, "t": float(t), "sample": x, "pred_xstart": x0})
    return x


def euler_maruyama_sample(score_model, sde, shape_or_noise, **options) -> torch.Tensor:
    """Euler–Maruyama on the reverse SDE: :func:`pc_sample` with that predictor and no corrector (same arguments)."""
    return pc_sample(score_model, sde, shape_or_noise,
                     **{"predictor": "euler_maruyama", "corrector": "none", **options})


def reverse_diffusion_sample(score_model, sde, shape_or_noise, **options) -> torch.Tensor:
    """The reverse-diffusion predictor alone (ancestral-like sampling of any SDE): :func:`pc_sample` without a
    corrector (same arguments)."""
    return pc_sample(score_model, sde, shape_or_noise,
                     **{"predictor": "reverse_diffusion", "corrector": "none", **options})


# ---------------------------------------------------------------------------------------------- annealed Langevin
def annealed_langevin_sample(score_model: ScoreModel, sde: Optional[SDE], shape_or_noise: ShapeOrNoise, *,
                             y: Optional[torch.Tensor] = None, guidance=None, steps: int = 10,
                             steps_per_level: int = 100, step_size: float = 2e-5,
                             sigmas: Optional[Sequence[float]] = None, eps: Optional[float] = None,
                             times: Optional[Sequence[float]] = None, denoise: bool = True,
                             generator: Generators = None, progress: bool = True, callback: StepCallback = None,
                             device=None) -> torch.Tensor:
    """Annealed Langevin dynamics (Algorithm 1 of Song & Ermon 2019, NCSN).

    For noise levels sigma_1 > ... > sigma_L and T = ``steps_per_level`` steps per level,

        alpha_i = step_size * sigma_i^2 / sigma_L^2,   x <- x + alpha_i / 2 * score(x, sigma_i) + sqrt(alpha_i) z,

    starting from the SDE's prior; ``denoise`` ends with x <- (x + sigma_L^2 score) / a_L (Tweedie;
    the final denoising step of Song & Ermon 2020 for VE, where a = 1).

    Levels: ``sigmas`` (decreasing; mapped to times by ``sde.t_from_sigma``), or ``times``, or by
    default ``steps`` levels geometric in sigma from sigma(1) to sigma(eps) — for VE these are
    uniform in t and exactly NCSN's geometric sigmas. sigma_i is the marginal std sigma_t at each
    level, so the rule applies to VP and sub-VP SDEs too (sub-VP's sigma(eps = 1e-3) is only 1e-4:
    end it at a larger sigma there). ``step_size`` must stay below 2 sigma_L^2. The other arguments
    are :func:`pc_sample`'s; ``callback`` is called once per level with ``{"i", "t", "sample",
    "pred_xstart"}`` (``pred_xstart``: the Tweedie estimate from the level's last score). Returns the
    sample after the last level (denoised if ``denoise``).
    """
    if not isinstance(steps_per_level, int) or steps_per_level < 1:
        raise ValueError(f"steps_per_level must be a positive integer, got {steps_per_level!r}")
    if not isinstance(step_size, (int, float)) or not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"the Langevin step size must be a positive number, got {step_size!r}")
    sde = check_sde(score_model, sde)
    if sigmas is not None:
        sigma_levels = as_time(sigmas).reshape(-1)
        if (sigma_levels <= 0).any() or (sigma_levels.diff() >= 0).any():
            raise ValueError("sigmas must be positive and strictly decreasing")
        levels = sde.t_from_sigma(sigma_levels)
    elif times is not None:
        levels = time_grid(sde, None, None, times)
    else:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps (the number of noise levels) must be a positive integer, got {steps!r}")
        t_end = sde.eps if eps is None else float(eps)
        hi, lo = sde.sigma(1.0).log(), sde.sigma(t_end).log()
        levels = sde.t_from_sigma(torch.exp(torch.linspace(float(hi), float(lo), steps, dtype=torch.float64)))
        levels[0], levels[-1] = 1.0, t_end  # exact ends despite round-off in the inversion
    sigma_last = sde.sigma(levels[-1])
    if step_size >= 2 * float(sigma_last) ** 2:
        raise ValueError(f"step_size {step_size} >= 2 sigma_L^2 = {2 * float(sigma_last) ** 2:.3g}: every Langevin "
                         f"step alpha_i = step_size sigma_i^2 / sigma_L^2 would exceed twice the level's variance "
                         f"(NCSN: step_size 2e-5 with sigma_L = 0.01); lower it or end at a larger sigma_L")
    x, y = start(score_model, sde, shape_or_noise, y, generator, device)
    score_fn = GuidedScore(score_model, y, guidance, generator)
    for i in steps_with_progress(range(len(levels)), progress, "annealed-langevin"):
        t = levels[i]
        alpha = float(step_size * (sde.sigma(t) / sigma_last) ** 2)
        for _ in range(steps_per_level):
            score = score_fn(x, t)
            x = x + 0.5 * alpha * score + math.sqrt(alpha) * randn(x.shape, generator, x.device, x.dtype)
        x0 = tweedie_x0(x, score, sde, t)
        if i == len(levels) - 1 and denoise:
            x = x0 = tweedie_x0(x, score_fn(x, t), sde, t)
        if callback is not None:
            callback({"i": i, "t": float(t), "sample": x, "pred_xstart": x0})
    return x


__all__ = [
    "Predictor", "Corrector", "NormKind", "time_grid", "check_snr", "langevin_step", "predictor_step",
    "pc_sample", "euler_maruyama_sample", "reverse_diffusion_sample", "annealed_langevin_sample",
]
