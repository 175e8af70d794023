"""Noise-conditional score networks (NCSN, Song & Ermon 2019, 2020) in plain PyTorch.

**Noise levels** (Song & Ermon 2020, "Improved techniques"): geometric sigma_1 > ... > sigma_L with

- Technique 1: sigma_1 as large as the maximum Euclidean distance between training points, so
  that Langevin dynamics at sigma_1 can move between any two modes;
- Technique 2: the common ratio gamma = sigma_{i-1} / sigma_i chosen so that

      Phi(sqrt(2D) (gamma - 1) + 3 gamma) - Phi(sqrt(2D) (gamma - 1) - 3 gamma) ~ 0.5,

  Phi the standard normal *CDF* (a probability, not a density:
  for x ~ N(0, sigma_i^2 I), |x| ~ N(sqrt(D) sigma_i, sigma_i^2 / 2) approximately, and the
  expression is P(|x| within 3 std of the shell sqrt(D) sigma_{i-1})). It needs sqrt(2D) > 3,
  i.e. D >= 5. For CIFAR-10 (D = 3072) it gives gamma = 1.0398; the paper's 232 levels from 50
  to 0.01 have gamma = 1.0376, i.e. overlap 0.57 (CelebA 64: 500 levels from 90, overlap 0.57 too).
  sigma_L is small (0.01 for [-1, 1] images).
- Technique 4 (:func:`langevin_step_size`): with T Langevin steps per level, the step size eps of
  alpha_i = eps sigma_i^2 / sigma_L^2 that brings the variance after a level closest to the level's
  own (CIFAR-10: T = 5 gives 6.2e-6, the paper's value).

**Loss**: denoising score matching with lambda(sigma) = sigma^2, per example

    l = 1/2 |sigma s_theta(x + sigma z, sigma) + z|^2,   sigma ~ U{sigma_1..sigma_L}, z ~ N(0, I),

which is sigma^2 * 1/2 |s_theta - grad log q_sigma(x~ | x)|^2 with grad log q = -z / sigma.

**Network** (:class:`NoiseConditionalScoreNetwork`): this project's UNet in eps form,

    s_theta(x, sigma) = -UNet(x / sqrt(1 + sigma^2), c_noise(sigma))[:C] / sigma,
    c_noise(sigma) = (N - 1) log(sigma / sigma_min) / log(sigma_max / sigma_min),

i.e. the VE SDE's model time (N = 1000: the UNet's usual timestep range, 0 at sigma_min, 999 at
sigma_max). Dividing by sigma is NCSNv2's Technique 3 (|score| ~ 1 / sigma); the input scaling
makes the VE input x0 + sigma z exactly a VP input a x0 + sqrt(1 - a^2) z with
a = 1 / sqrt(1 + sigma^2) and the same eps, so the ADM UNet sees what it sees in DDPM training.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from scipy import optimize, stats
from torch import nn

from ..diffusion.prediction import score_from_eps
from ..noise import Generators, PhiloxStreams, randn
from .models import EpsScoreModel
from .sdes import VESDE, as_time, broadcast


# ---------------------------------------------------------------------------------------------- noise levels
def sigma_overlap(gamma: float, dim: int) -> float:
    """Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) (Technique 2)."""
    root = math.sqrt(2 * dim)
    return float(stats.norm.cdf(root * (gamma - 1) + 3 * gamma) - stats.norm.cdf(root * (gamma - 1) - 3 * gamma))


def gamma_for_dimension(dim: int, overlap: float = 0.5) -> float:
    """The ratio gamma > 1 with ``sigma_overlap(gamma, dim) = overlap`` (Technique 2)."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"the data dimension must be a positive integer, got {dim!r}")
    if not 0 < overlap < sigma_overlap(1.0, dim):
        raise ValueError(f"overlap must lie in (0, {sigma_overlap(1.0, dim):.4f}), got {overlap}")
    if math.sqrt(2 * dim) <= 3:
        raise ValueError(f"the overlap rule needs sqrt(2 D) > 3 (D >= 5), got D = {dim}: its shell approximation "
                         "|x| ~ N(sqrt(D) sigma, sigma^2 / 2) is a high-dimensional one")
    high = 2.0
    while sigma_overlap(high, dim) > overlap:
        high *= 2
    return float(optimize.brentq(lambda g: sigma_overlap(g, dim) - overlap, 1.0, high, xtol=1e-12))


def max_pairwise_distance(x: torch.Tensor, chunk_size: int = 1024) -> float:
    """max_{i, j} |x_i - x_j| over a dataset (N, ...), in chunks of rows (float64)."""
    flat = x.reshape(len(x), -1).double()
    if len(flat) < 2:
        raise ValueError("need at least two data points for a pairwise distance")
    best = 0.0
    for start in range(0, len(flat), chunk_size):
        best = max(best, float(torch.cdist(flat[start:start + chunk_size], flat).max()))
    return best


def geometric_sigmas(sigma_max: float, sigma_min: float, num_scales: int) -> torch.Tensor:
    """sigma_1 = sigma_max > ... > sigma_L = sigma_min, geometric (float64)."""
    if not (math.isfinite(sigma_max) and math.isfinite(sigma_min)) or sigma_min <= 0 or sigma_max <= 0:
        raise ValueError(f"sigmas must be positive, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be below sigma_max, got sigma_min={sigma_min} >= sigma_max={sigma_max}")
    if not isinstance(num_scales, int) or num_scales < 2:
        raise ValueError(f"num_scales must be an integer >= 2, got {num_scales!r}")
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales, dtype=torch.float64))


def ncsn_sigmas(data: Optional[torch.Tensor] = None, *, sigma_max: Optional[float] = None, sigma_min: float = 0.01,
                num_scales: Optional[int] = None, dim: Optional[int] = None, overlap: float = 0.5) -> torch.Tensor:
    """NCSNv2's noise levels: sigma_1 from the data (Technique 1), gamma from the dimension (Technique 2).

    Args:
        data: training points (N, ...); gives sigma_max (max pairwise distance) and D when not set.
        sigma_max, sigma_min: the ends (sigma_min default 0.01).
        num_scales: L; by default the smallest L whose ratio (sigma_max / sigma_min)^(1 / (L - 1))
            is at most gamma (so neighbouring levels overlap at least ``overlap``).
    """
    if sigma_max is None:
        if data is None:
            raise ValueError("give the data or sigma_max")
        sigma_max = max_pairwise_distance(data)
    if num_scales is None:
        if dim is None:
            if data is None:
                raise ValueError("give the data, dim or num_scales")
            dim = int(data[0].numel())
        gamma = gamma_for_dimension(dim, overlap)
        if sigma_min >= sigma_max:
            raise ValueError(f"sigma_min must be below sigma_max, got sigma_min={sigma_min} >= sigma_max={sigma_max}")
        num_scales = max(2, math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma) - 1e-9) + 1)
    return geometric_sigmas(float(sigma_max), float(sigma_min), num_scales)


def langevin_variance_ratio(step_size: float, gamma: float, steps_per_level: int, sigma_min: float) -> float:
    """s_T^2 / sigma_i^2 of annealed Langevin after ``steps_per_level`` steps at a level (Song & Ermon 2020, eq. 4).

    For data that is a point (the analysis of Technique 4), starting from the previous level's
    variance gamma^2 sigma_i^2, T Langevin steps of size alpha_i = eps sigma_i^2 / sigma_L^2 leave

        (1 - a)^(2T) (gamma^2 - 2 / (2 - a)) + 2 / (2 - a),      a = eps / sigma_L^2,

    times sigma_i^2 (the same for every level); 1 would be the level's own variance.
    """
    a = step_size / sigma_min ** 2
    if not 0 < a < 1:
        raise ValueError(f"the step size must lie in (0, sigma_min^2 = {sigma_min ** 2:.3g}), got {step_size}")
    stationary = 2 / (2 - a)
    return (1 - a) ** (2 * steps_per_level) * (gamma ** 2 - stationary) + stationary


def langevin_step_size(gamma: float, steps_per_level: int, sigma_min: float) -> float:
    """Technique 4 of Song & Ermon 2020: the step size eps making :func:`langevin_variance_ratio` closest to 1.

    The ratio exceeds 1 for every eps (for gamma > 1), so this is its minimiser over eps in
    (0, sigma_min^2). CIFAR-10 (gamma = 1.0376, T = 5, sigma_L = 0.01) gives the paper's 6.2e-6.
    """
    if not math.isfinite(gamma) or gamma <= 1:
        raise ValueError(f"the ratio of neighbouring noise levels gamma must be > 1, got {gamma}")
    if not isinstance(steps_per_level, int) or steps_per_level < 1:
        raise ValueError(f"steps_per_level must be a positive integer, got {steps_per_level!r}")
    if not math.isfinite(sigma_min) or sigma_min <= 0:
        raise ValueError(f"sigma_min must be positive, got {sigma_min}")
    result = optimize.minimize_scalar(
        lambda log_a: langevin_variance_ratio(math.exp(log_a) * sigma_min ** 2, gamma, steps_per_level, sigma_min),
        bounds=(math.log(1e-8), math.log(0.999)), method="bounded", options={"xatol": 1e-10})
    return float(math.exp(result.x) * sigma_min ** 2)


# ---------------------------------------------------------------------------------------------- loss
def _randint(high: int, count: int, generator: Generators, device) -> torch.Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randint(high, (count,), generator=generator, device=device)
    if len(generator) != count:
        raise ValueError(f"{len(generator)} generators for a batch of {count}")
    if isinstance(generator, PhiloxStreams):
        return generator.randint(high).to(device)
    return torch.cat([torch.randint(high, (1,), generator=g, device=device) for g in generator])


def ncsn_loss(score_fn: Callable, x0: torch.Tensor, sigmas: Sequence[float] | torch.Tensor,
              generator: Generators = None, *, labels: Optional[torch.Tensor] = None,
              y: Optional[torch.Tensor] = None) -> dict:
    """Denoising score matching over noise levels with lambda(sigma) = sigma^2 (NCSN).

    Args:
        score_fn: ``score_fn(x~, sigma)`` (or ``score_fn(x~, sigma, y)`` when ``y`` is given) with
            sigma of shape (B,), e.g. :meth:`NoiseConditionalScoreNetwork.score_sigma`.
        x0: clean data (B, ...); ``sigmas``: the L noise levels.
        generator: for the level indices and the noise (one, or one per sample).
        labels: fixed level indices (B,) instead of uniform draws.

    Returns per example ``loss`` = 1/2 |sigma s + z|^2 (summed over dimensions), the level index
    ``sigma_index`` and ``sigma`` (for per-level logging); average ``loss`` for the objective.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=x0.device).reshape(-1)
    if len(sigmas) == 0 or (sigmas <= 0).any():
        raise ValueError("sigmas must be a non-empty sequence of positive noise levels")
    index = _randint(len(sigmas), len(x0), generator, x0.device) if labels is None else labels.to(x0.device).long()
    sigma = sigmas[index]
    z = randn(x0.shape, generator, x0.device, x0.dtype)
    noisy = x0 + broadcast(sigma, x0) * z
    score = score_fn(noisy, sigma.to(x0.dtype)) if y is None else score_fn(noisy, sigma.to(x0.dtype), y)
    residual = broadcast(sigma, x0) * score + z
    return {"loss": 0.5 * residual.reshape(len(x0), -1).pow(2).sum(1), "sigma_index": index, "sigma": sigma}


# ---------------------------------------------------------------------------------------------- network
class NoiseConditionalScoreNetwork(nn.Module):
    """A VE noise-conditional score network on the project's UNet (see the module docstring).

    ``forward(x, t_model, y=None)`` is the project's denoiser contract on the VE model-time axis
    (returns eps in SDE units, the input scaling inside), so guidance wrappers, inpainting and
    :class:`~.models.EpsScoreModel` apply to it unchanged; :meth:`score_sigma` is s_theta(x, sigma)
    for :func:`ncsn_loss` and annealed Langevin; :meth:`score_model` the view for the SDE samplers.

    Args:
        unet: a network ``unet(x, t, y=None)`` (e.g. ``UNet(UNetConfig(...))``) or a UNetConfig / its dict.
        sigma_min, sigma_max: the VE range (sigma_L and sigma_1).
        num_timesteps: N of the model-time axis c_noise in [0, N - 1].
        scale_input: feed x / sqrt(1 + sigma^2) (True) or x as is.
    """

    def __init__(self, unet: nn.Module | dict | object, sigma_min: float = 0.01, sigma_max: float = 50.0, *,
                 num_timesteps: int = 1000, scale_input: bool = True):
        super().__init__()
        if not isinstance(unet, nn.Module):
            from ..nets.unet import UNet

            unet = UNet(unet)
        self.unet = unet
        self.sde = VESDE(sigma_min, sigma_max, N=num_timesteps)
        self.scale_input = scale_input

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(self.unet, "num_classes", None)

    def c_noise(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The network time of a noise level: (N - 1) log(sigma / sigma_min) / log(sigma_max / sigma_min)."""
        return self.sde.model_time(self.sde.t_from_sigma(sigma))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        sigma = self.sde.sigma(self.sde.time_of_model_time(as_time(t, x.device)))
        x_in = x / broadcast(torch.sqrt(1 + sigma ** 2), x) if self.scale_input else x
        t = as_time(t, x.device)
        t = t.expand(len(x)) if t.ndim == 0 else t
        out = self.unet(x_in, t.float()) if y is None else self.unet(x_in, t.float(), y=y)
        return out[:, :x.shape[1]]

    def score_sigma(self, x: torch.Tensor, sigma: torch.Tensor | float,
                    y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """s_theta(x, sigma) = -eps(x, c_noise(sigma)) / sigma (sigma a number or (B,))."""
        sigma = as_time(sigma, x.device)
        return score_from_eps(self(x, self.c_noise(sigma), y), broadcast(sigma, x))

    def score_model(self) -> EpsScoreModel:
        """The view the SDE samplers take: score(x, t) = s_theta(x, sigma(t)) on the VE SDE."""
        return EpsScoreModel(self, self.sde)


__all__ = ["sigma_overlap", "gamma_for_dimension", "max_pairwise_distance", "geometric_sigmas", "ncsn_sigmas",
           "langevin_variance_ratio", "langevin_step_size", "ncsn_loss", "NoiseConditionalScoreNetwork"]
