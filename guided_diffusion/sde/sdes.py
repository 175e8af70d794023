"""The SDEs of the score-SDE family (Song et al. 2021) behind one small interface.

Every SDE here is linear with a scalar drift coefficient,

    dx = f(t) x dt + g(t) dw,        t in [0, 1],

so its perturbation kernel is Gaussian and known in closed form. It is written against the clean
data x_data:

    x_t = a_t x_data + sigma_t eps,  eps ~ N(0, I)           (``marginal(t) -> (a_t, sigma_t)``)

with d log a_t / dt = f(t) and d sigma_t^2 / dt = 2 f(t) sigma_t^2 + g(t)^2. Over a step s < t
the process moves by the exact transition x_t = r x_s + G z, r = a_t / a_s,
G^2 = sigma_t^2 - r^2 sigma_s^2 (``transition``), which is also how the reverse-diffusion
predictor discretises any of them.

- **VE** (NCSN, Song & Ermon 2019): sigma(t) = sigma_min (sigma_max / sigma_min)^t, f = 0,
  g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)), a_t = 1, sigma_t = sigma(t). As in Song et
  al. (2021, App. C), the state at t = 0 is the data perturbed by sigma_min, so sigma_0 = sigma_min.
- **VP** (DDPM): beta(t) = beta_min + t (beta_max - beta_min), f = -beta(t) / 2, g = sqrt(beta(t)),
  B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2, a_t = exp(-B / 2),
  sigma_t = sqrt(1 - exp(-B)). beta_min = 0.1, beta_max = 20 is DDPM's linear schedule with T = 1000.
- **sub-VP**: f = -beta(t) / 2, g = sqrt(beta(t) (1 - exp(-2 B(t)))), a_t as VP,
  sigma_t = 1 - exp(-B) (below the VP sigma_t at every t).
- **DiscreteVP**: the discrete DDPM chain of a :class:`~guided_diffusion.diffusion.GaussianDiffusion`
  as a VP SDE: grid points t_k = k / (K - 1) carry abar_k exactly, B(t) = -log abar(t) is linear
  between them (so beta(t) is piecewise constant and r^2 over one grid step is 1 - beta_k).

**Model time.** Networks are conditioned on t_model = (N - 1) t, DDPM's integer-timestep axis
(N = 1000 for the continuous SDEs, as in score_sde); for a DiscreteVP the grid index k = t (K - 1)
is mapped through the diffusion's ``timestep_map`` to the *original* DDPM timestep. A noise-aware
classifier for guidance sees the same t_model as the network it guides.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Literal, Optional, Sequence, get_args

import numpy as np
import torch

from ..diffusion.noise_levels import NoiseLevels
from ..noise import randn

SDEName = Literal["ve", "vp", "subvp"]
Time = float | torch.Tensor


def as_time(t: Time, device=None) -> torch.Tensor:
    """Times as a float64 tensor (a Python number becomes a 0-d tensor)."""
    return torch.as_tensor(t, dtype=torch.float64, device=device)


def broadcast(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) or scalar coefficient shaped (B, 1, ..., 1) in the dtype of x."""
    value = torch.as_tensor(value, device=x.device).to(x.dtype)
    if value.ndim == 0:
        return value
    return value.reshape(value.shape + (1,) * (x.ndim - value.ndim))


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation (numpy.interp in torch), clamped at both ends; xp increasing."""
    x = x.to(xp.dtype)
    idx = (torch.searchsorted(xp, x.reshape(-1).contiguous(), right=True) - 1).clamp(0, len(xp) - 2)
    x0, x1, y0, y1 = xp[idx], xp[idx + 1], fp[idx], fp[idx + 1]
    w = ((x.reshape(-1) - x0) / (x1 - x0)).clamp(0, 1)
    return (y0 + w * (y1 - y0)).reshape(x.shape)


def _check_finite(**values: float) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"N (the number of model timesteps) must be an integer >= 2, got {n!r}")


class SDE(NoiseLevels):
    """A linear SDE dx = f(t) x dt + g(t) dw on t in [0, 1] with its closed-form marginals.

    Subclasses define ``log_mean_coeff`` (log a_t), ``sigma`` (sigma_t), ``drift_coeff`` (f) and
    ``diffusion`` (g); the rest follows, including the :class:`~guided_diffusion.diffusion.noise_levels.NoiseLevels`
    view (``alpha``, ``snr``, ``log_snr`` at continuous t). Times may be Python floats or tensors of shape (B,).
    """

    #: Number of model timesteps: networks see t_model = (N - 1) t.
    N: int
    #: Default smallest time the samplers integrate down to (and ``ode_likelihood`` up from).
    eps: float
    #: Standard deviation of the prior N(0, prior_std^2 I) at t = 1.
    prior_std: float
    #: Original DDPM timesteps of the N grid points (None: the identity, t_model = (N - 1) t).
    timestep_map: Optional[torch.Tensor] = None

    @abstractmethod
    def log_mean_coeff(self, t: Time) -> torch.Tensor:
        """log a_t."""

    @abstractmethod
    def sigma(self, t: Time) -> torch.Tensor:
        """sigma_t, the standard deviation of x_t given the clean data."""

    @abstractmethod
    def drift_coeff(self, t: Time) -> torch.Tensor:
        """f(t) in f(x, t) = f(t) x."""

    @abstractmethod
    def diffusion(self, t: Time) -> torch.Tensor:
        """g(t)."""

    @abstractmethod
    def t_from_sigma(self, sigma: Time) -> torch.Tensor:
        """The time t at which sigma_t = sigma (sigma_t is increasing in t)."""

    # ------------------------------------------------------------------ derived quantities
    def marginal(self, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, sigma_t): x_t = a_t x_data + sigma_t eps, float64 tensors shaped like t."""
        t = as_time(t)
        return torch.exp(self.log_mean_coeff(t)), self.sigma(t)

    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """f(x, t) = f(t) x."""
        return broadcast(self.drift_coeff(as_time(t, x.device)), x) * x

    def transition(self, s: Time, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, G) of the exact forward step s -> t (s < t): x_t = r x_s + G z."""
        a_s, sigma_s = self.marginal(s)
        a_t, sigma_t = self.marginal(t)
        r = a_t / a_s
        return r, (sigma_t ** 2 - r ** 2 * sigma_s ** 2).clamp(min=0).sqrt()

    def prior_sample(self, shape: Sequence[int], generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        """x_1 ~ N(0, prior_std^2 I) (one generator, or one per sample)."""
        return randn(shape, generator, device=device, dtype=dtype) * self.prior_std

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per sample, (B,), in the dtype of z."""
        d = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * self.prior_std ** 2) - sq / (2 * self.prior_std ** 2)

    # ------------------------------------------------------------------ model time
    def _map(self, index: torch.Tensor) -> torch.Tensor:
        if self.timestep_map is None:
            return index
        table = self.timestep_map.to(index.device)
        if not index.dtype.is_floating_point:
            return table[index]
        return interp(index, torch.arange(self.N, dtype=torch.float64, device=index.device), table.double())

    def model_time(self, t: Time, mode: Literal["continuous", "round"] = "continuous") -> torch.Tensor:
        """The time the network sees: (N - 1) t (float), or the nearest grid timestep (long) for ``round``."""
        index = as_time(t) * (self.N - 1)
        if mode == "round":
            index = index.round().clamp(0, self.N - 1).long()
        return self._map(index)

    def model_time_bracket(self, t: Time) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lower, upper, w): the grid timesteps around t and the weight of the upper one."""
        index = as_time(t) * (self.N - 1)
        lower = index.floor().clamp(0, self.N - 2)
        return self._map(lower.long()), self._map(lower.long() + 1), (index - lower).clamp(0, 1)

    def time_of_model_time(self, t_model: Time) -> torch.Tensor:
        """Inverse of :meth:`model_time`: the SDE time of a network time."""
        t_model = as_time(t_model)
        if self.timestep_map is None:
            return t_model / (self.N - 1)
        grid = torch.arange(self.N, dtype=torch.float64, device=t_model.device)
        return interp(t_model, self.timestep_map.double().to(t_model.device), grid) / (self.N - 1)

    def model_noise_level(self, t_model: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, sigma) at network time t_model (for wrappers that only see the network's inputs)."""
        return self.marginal(self.time_of_model_time(t_model))


@dataclass(frozen=True, eq=True)
class VESDE(SDE):
    """Variance exploding: sigma(t) = sigma_min (sigma_max / sigma_min)^t, prior N(0, sigma_max^2 I)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000
    eps: float = 1e-5

    def __post_init__(self):
        _check_finite(sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        if self.sigma_min <= 0 or self.sigma_max <= 0:
            raise ValueError(f"VE sigmas must be positive, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"VE sigma_min must be below sigma_max, got sigma_min={self.sigma_min} "
                             f">= sigma_max={self.sigma_max}")
        _check_n(self.N)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    @property
    def log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def log_mean_coeff(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(as_time(t) * self.log_ratio)

    def drift_coeff(self, t):
        return torch.zeros_like(as_time(t))

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * self.log_ratio)

    def transition(self, s, t):
        sigma_s, sigma_t = self.sigma(s), self.sigma(t)
        return torch.ones_like(sigma_t), (sigma_t ** 2 - sigma_s ** 2).clamp(min=0).sqrt()

    def t_from_sigma(self, sigma):
        return torch.log(as_time(sigma) / self.sigma_min) / self.log_ratio


class _VPFamily(SDE):
    """SDEs with f = -beta(t) / 2 and a_t = exp(-B(t) / 2), B(t) = int beta."""

    prior_std = 1.0

    @abstractmethod
    def cumulative_beta(self, t: torch.Tensor) -> torch.Tensor:
        """B(t) (for a DiscreteVP, -log abar(t))."""

    @abstractmethod
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t) = dB/dt."""

    @abstractmethod
    def t_from_cumulative_beta(self, b: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`cumulative_beta`."""

    def log_mean_coeff(self, t):
        return -0.5 * self.cumulative_beta(as_time(t))

    def drift_coeff(self, t):
        return -0.5 * self.beta(as_time(t))


class _VP(_VPFamily):
    """sigma_t^2 = 1 - a_t^2, g = sqrt(beta); one step s -> t has G^2 = 1 - r^2 exactly."""

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self.cumulative_beta(as_time(t))))

    def diffusion(self, t):
        return torch.sqrt(self.beta(as_time(t)))

    def transition(self, s, t):
        step = self.cumulative_beta(as_time(t)) - self.cumulative_beta(as_time(s))
        return torch.exp(-0.5 * step), torch.sqrt((-torch.expm1(-step)).clamp(min=0))

    def t_from_sigma(self, sigma):
        return self.t_from_cumulative_beta(-torch.log1p(-as_time(sigma) ** 2))


@dataclass(frozen=True, eq=True)
class _LinearBeta:
    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000
    eps: float = 1e-3

    def __post_init__(self):
        _check_finite(beta_min=self.beta_min, beta_max=self.beta_max)
        if self.beta_min < 0 or self.beta_max <= 0 or self.beta_max < self.beta_min:
            raise ValueError(f"need 0 <= beta_min <= beta_max and beta_max > 0, got beta_min={self.beta_min}, "
                             f"beta_max={self.beta_max}")
        _check_n(self.N)

    def cumulative_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def t_from_cumulative_beta(self, b):
        slope = self.beta_max - self.beta_min
        if slope == 0:
            return b / self.beta_min
        return (torch.sqrt(self.beta_min ** 2 + 2 * slope * b) - self.beta_min) / slope


@dataclass(frozen=True, eq=True)
class VPSDE(_LinearBeta, _VP):
    """Variance preserving: beta(t) = beta_min + t (beta_max - beta_min), prior N(0, I)."""


@dataclass(frozen=True, eq=True)
class SubVPSDE(_LinearBeta, _VPFamily):
    """sub-VP: g = sqrt(beta (1 - exp(-2B))), sigma_t = 1 - exp(-B), prior N(0, I)."""

    def sigma(self, t):
        return -torch.expm1(-self.cumulative_beta(as_time(t)))

    def diffusion(self, t):
        t = as_time(t)
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.cumulative_beta(t)))

    def t_from_sigma(self, sigma):
        return self.t_from_cumulative_beta(-torch.log1p(-as_time(sigma)))


class DiscreteVPSDE(_VP):
    """The DDPM chain as a VP SDE: abar_k sits exactly at t_k = k / (K - 1), B = -log abar is linear between.

    Args:
        alphas_cumprod: abar_0 .. abar_{K-1} of the (possibly respaced) discrete process.
        timestep_map: the original DDPM timestep of each of the K steps (default: 0 .. K - 1).
    """

    eps = 0.0  # t = 0 is the first noisy step (sigma_0 = sqrt(1 - abar_0) > 0), not the data

    def __init__(self, alphas_cumprod: Sequence[float] | np.ndarray, timestep_map: Optional[Sequence[int]] = None):
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        if abar.ndim != 1 or len(abar) < 2:
            raise ValueError(f"alphas_cumprod must be a 1-d array of at least 2 values, got shape {abar.shape}")
        if not (np.all(abar > 0) and np.all(abar < 1) and np.all(np.diff(abar) < 0)):
            raise ValueError("alphas_cumprod must decrease strictly inside (0, 1)")
        self.N = len(abar)
        self.alphas_cumprod = abar
        self._b = torch.as_tensor(-np.log(abar))
        self._grid = torch.linspace(0, 1, self.N, dtype=torch.float64)
        self.timestep_map = torch.arange(self.N) if timestep_map is None else torch.as_tensor(
            list(timestep_map), dtype=torch.long)
        if self.timestep_map.shape != (self.N,) or (self.timestep_map.diff() <= 0).any():
            raise ValueError(f"timestep_map must hold {self.N} increasing timesteps")

    @classmethod
    def from_diffusion(cls, diffusion) -> "DiscreteVPSDE":
        """The VP-SDE view of a GaussianDiffusion (respaced or not)."""
        return cls(diffusion.alphas_cumprod, diffusion.timestep_map.tolist())

    def __eq__(self, other):
        return (isinstance(other, DiscreteVPSDE) and np.array_equal(self.alphas_cumprod, other.alphas_cumprod)
                and torch.equal(self.timestep_map, other.timestep_map))

    __hash__ = None

    def __repr__(self):
        return f"DiscreteVPSDE(K={self.N}, timesteps {int(self.timestep_map[0])}..{int(self.timestep_map[-1])})"

    def cumulative_beta(self, t):
        t = as_time(t)
        return interp(t, self._grid.to(t.device), self._b.to(t.device))

    def beta(self, t):
        t = as_time(t)
        k = (t * (self.N - 1)).floor().clamp(0, self.N - 2).long()
        b = self._b.to(t.device)
        return (b[k + 1] - b[k]) * (self.N - 1)

    def t_from_cumulative_beta(self, b):
        b = as_time(b)
        return interp(b, self._b.to(b.device), self._grid.to(b.device))


SDE_CLASSES: dict[str, type[SDE]] = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}


def get_sde(name: SDEName, **kwargs) -> SDE:
    """An SDE by name (``"ve"``, ``"vp"``, ``"subvp"``) with its keyword parameters."""
    if name not in SDE_CLASSES:
        raise ValueError(f"unknown SDE {name!r}; expected one of {', '.join(get_args(SDEName))}")
    return SDE_CLASSES[name](**kwargs)


__all__ = ["SDE", "SDEName", "VESDE", "VPSDE", "SubVPSDE", "DiscreteVPSDE", "get_sde", "as_time", "broadcast",
           "interp"]
