"""One view of a noise schedule: alpha_t, sigma_t, SNR_t and lambda_t, in discrete and continuous time.

In the notation of Kingma et al. (2021) and Lu et al. (2022), a Gaussian perturbation is

    x_t = alpha_t x_0 + sigma_t eps,        SNR_t = alpha_t^2 / sigma_t^2,        lambda_t = log(alpha_t / sigma_t),

so lambda_t = log(SNR_t) / 2. A discrete DDPM process has alpha_t = sqrt(abar_t) and sigma_t =
sqrt(1 - abar_t) at its integer steps (:class:`DiscreteNoiseLevels`, ``GaussianDiffusion.noise_levels``);
the SDEs of :mod:`guided_diffusion.sde` are :class:`NoiseLevels` on continuous t in [0, 1]
(``marginal(t) = (alpha_t, sigma_t)``; VE: alpha_t = 1). Samplers, SDEs and loss weights read these
instead of recomputing them.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["NoiseLevels", "DiscreteNoiseLevels"]


class NoiseLevels(ABC):
    """alpha_t, sigma_t and what follows from them; ``t`` as the implementation indexes time."""

    @abstractmethod
    def marginal(self, t: Any) -> tuple[Any, Any]:
        """(alpha_t, sigma_t)."""

    def alpha(self, t: Any) -> Any:
        return self.marginal(t)[0]

    def sigma(self, t: Any) -> Any:
        return self.marginal(t)[1]

    def snr(self, t: Any) -> Any:
        """SNR_t = alpha_t^2 / sigma_t^2."""
        alpha, sigma = self.marginal(t)
        return alpha ** 2 / sigma ** 2

    def log_snr(self, t: Any) -> Any:
        """lambda_t = log(alpha_t / sigma_t) (half the log-SNR)."""
        alpha, sigma = self.marginal(t)
        return np.log(alpha / sigma) if isinstance(alpha, (float, np.ndarray)) else (alpha / sigma).log()


class DiscreteNoiseLevels(NoiseLevels):
    """The levels of a discrete process at its steps k = 0 .. K-1, from abar_k (float64 arrays).

    ``alphas``, ``sigmas``, ``snrs``, ``log_snrs`` are the whole grid; ``marginal(k)`` etc. index it
    (k an int or an integer array).

    Args:
        alphas_cumprod: abar_0 .. abar_{K-1}, strictly inside (0, 1] and decreasing.
    """

    def __init__(self, alphas_cumprod: np.ndarray):
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        if self.alphas_cumprod.ndim != 1 or len(self.alphas_cumprod) == 0:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-d array, got shape {self.alphas_cumprod.shape}")

    def __len__(self) -> int:
        return len(self.alphas_cumprod)

    @cached_property
    def alphas(self) -> np.ndarray:
        """alpha_k = sqrt(abar_k)."""
        return np.sqrt(self.alphas_cumprod)

    @cached_property
    def sigmas(self) -> np.ndarray:
        """sigma_k = sqrt(1 - abar_k)."""
        return np.sqrt(1.0 - self.alphas_cumprod)

    @cached_property
    def snrs(self) -> np.ndarray:
        """SNR_k = abar_k / (1 - abar_k) (the same as alpha_k^2 / sigma_k^2, without the round trip)."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    @cached_property
    def log_snrs(self) -> np.ndarray:
        """lambda_k = log(alpha_k / sigma_k) (correctly rounded per step, as ``math.log``)."""
        return np.array([math.log(a / s) for a, s in zip(self.alphas, self.sigmas)], dtype=np.float64)

    def marginal(self, t):
        return self.alphas[t], self.sigmas[t]

    def snr(self, t):
        return self.snrs[t]

    def log_snr(self, t):
        return self.log_snrs[t]
