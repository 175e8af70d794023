"""One view of a model's output: eps, x_0, the score and v from any one of them (closed forms).

With x_t = alpha_t x_0 + sigma_t eps (:mod:`.noise_levels`):

    x_0   = (x_t - sigma_t eps) / alpha_t          eps = (x_t - alpha_t x_0) / sigma_t
    score = grad log p_t(x_t) = -eps / sigma_t     (Tweedie: x_0 = (x_t + sigma_t^2 score) / alpha_t)
    v     = alpha_t eps - sigma_t x_0              (Salimans & Ho 2022; x_0 = alpha_t x_t - sigma_t v,
                                                    eps = sigma_t x_t + alpha_t v, for alpha^2 + sigma^2 = 1)

``alpha`` and ``sigma`` broadcast against ``x`` (scalars, or tensors shaped (B, 1, ..., 1)). The
discrete process (``GaussianDiffusion``) evaluates the same x_0 / eps relations from its float64
tables (sqrt(1 / abar), sqrt(1 / abar - 1)), exactly as the reference code, for parity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["Parameterization", "ModelPrediction", "x0_from_eps", "eps_from_x0", "score_from_eps", "eps_from_score",
           "x0_from_score", "v_from_eps_x0", "x0_from_v", "eps_from_v"]

Parameterization = Literal["eps", "x0", "score", "v"]


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return (x - sigma * eps) / alpha


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return (x - alpha * x0) / sigma


def score_from_eps(eps: torch.Tensor, sigma) -> torch.Tensor:
    return -eps / sigma


def eps_from_score(score: torch.Tensor, sigma) -> torch.Tensor:
    return -sigma * score


def x0_from_score(x: torch.Tensor, score: torch.Tensor, alpha, variance) -> torch.Tensor:
    """Tweedie's formula E[x_0 | x_t] = (x_t + sigma_t^2 score) / alpha_t (``variance`` = sigma_t^2)."""
    return (x + variance * score) / alpha


def v_from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return alpha * eps - sigma * x0


def x0_from_v(x: torch.Tensor, v: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """For a variance-preserving process (alpha^2 + sigma^2 = 1)."""
    return alpha * x - sigma * v


def eps_from_v(x: torch.Tensor, v: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """For a variance-preserving process (alpha^2 + sigma^2 = 1)."""
    return sigma * x + alpha * v


@dataclass(frozen=True)
class ModelPrediction:
    """A network output read as one parameterization, at x_t with levels (alpha_t, sigma_t).

    Args:
        kind: what ``value`` is: ``"eps"``, ``"x0"``, ``"score"`` or ``"v"``.
        value: the prediction (shaped like ``x``).
        x: the noisy input x_t.
        alpha: alpha_t, broadcastable against ``x``.
        sigma: sigma_t, broadcastable against ``x``.
    """

    kind: Parameterization
    value: torch.Tensor
    x: torch.Tensor
    alpha: torch.Tensor | float
    sigma: torch.Tensor | float

    def __post_init__(self):
        if self.kind not in ("eps", "x0", "score", "v"):
            raise ValueError(f"unknown parameterization {self.kind!r}; expected eps, x0, score or v")

    @property
    def eps(self) -> torch.Tensor:
        if self.kind == "eps":
            return self.value
        if self.kind == "x0":
            return eps_from_x0(self.x, self.value, self.alpha, self.sigma)
        if self.kind == "score":
            return eps_from_score(self.value, self.sigma)
        return eps_from_v(self.x, self.value, self.alpha, self.sigma)

    @property
    def x0(self) -> torch.Tensor:
        if self.kind == "x0":
            return self.value
        if self.kind == "score":
            return x0_from_score(self.x, self.value, self.alpha, self.sigma ** 2)
        if self.kind == "v":
            return x0_from_v(self.x, self.value, self.alpha, self.sigma)
        return x0_from_eps(self.x, self.value, self.alpha, self.sigma)

    @property
    def score(self) -> torch.Tensor:
        return self.value if self.kind == "score" else score_from_eps(self.eps, self.sigma)

    @property
    def v(self) -> torch.Tensor:
        return self.value if self.kind == "v" else v_from_eps_x0(self.eps, self.x0, self.alpha, self.sigma)
