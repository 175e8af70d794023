"""The Gaussian-mixture oracle: a data distribution whose every noisy quantity is exact.

Data x_0 ~ sum_k pi_k N(mu_k, s^2 I) with label y = k. Noised as x_t = a_t x_0 + sigma_t eps (for
DDPM a_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t); for a VE SDE a_t = 1), the marginal is again a
mixture:

    q_t(x)     = sum_k pi_k N(x; a_t mu_k, v_t I),       v_t = a_t^2 s^2 + sigma_t^2
    q_t(y | x) = softmax_k(log pi_k - |x - a_t mu_k|^2 / (2 v_t))
    grad log q_t(x | y=k) = (a_t mu_k - x) / v_t
    grad log q_t(x)       = sum_k q_t(k | x) (a_t mu_k - x) / v_t
    eps*(x, t) = E[eps | x_t = x] = -sigma_t grad log q_t(x)

so samplers, guidance and likelihoods can be checked against closed forms with no training.
:class:`MixtureDenoiser` and :class:`MixtureClassifier` wrap the exact eps and p(y | x_t) with the
network call signature ``model(x_t, t, y=None)``. Useful for teaching and debugging too.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

Scalar = float | torch.Tensor


class GaussianMixture:
    """A labelled isotropic Gaussian mixture in d dimensions (any event shape, e.g. (C, H, W)).

    Args:
        means: component means mu_k, shape (K, *event_shape).
        std: the common standard deviation s of every component (0 gives point masses).
        weights: mixture weights pi_k (normalised here); uniform when omitted.
    """

    def __init__(self, means: torch.Tensor | Sequence, std: float, weights: Optional[torch.Tensor | Sequence] = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim < 2:
            raise ValueError(f"means must have shape (K, *event_shape), got {tuple(self.means.shape)}")
        if not std >= 0:
            raise ValueError(f"std must be non-negative, got {std}")
        self.std = float(std)
        k = self.means.shape[0]
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum, got {w.tolist()}")
        self.weights = w / w.sum()

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def event_shape(self) -> torch.Size:
        return self.means.shape[1:]

    @property
    def dim(self) -> int:
        return int(np.prod(self.event_shape))

    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws (x_0 float32, y int64); ``labels`` fixes the components instead of drawing them."""
        if labels is None:
            labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        labels = torch.as_tensor(labels, dtype=torch.long)
        noise = torch.randn((n,) + tuple(self.event_shape), generator=generator, dtype=torch.float64)
        return (self.means[labels] + self.std * noise).float(), labels

    # --------------------------------------------------------------------------- noisy marginal
    def _prepare(self, x: torch.Tensor, a: Scalar, sigma: Scalar):
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ValueError(f"x has event shape {tuple(x.shape[1:])}, the mixture {tuple(self.event_shape)}")
        a = torch.as_tensor(a, dtype=torch.float64, device=x.device).reshape(-1, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1)
        var = a ** 2 * self.std ** 2 + sigma ** 2
        if (var <= 0).any():
            raise ValueError("the noisy marginal is degenerate (std = 0 and sigma_t = 0)")
        return flat, a, var

    def component_log_prob(self, x: torch.Tensor, a: Scalar = 1.0, sigma: Scalar = 0.0) -> torch.Tensor:
        """log pi_k + log N(x; a mu_k, v I) for every component, shape (B, K), float64."""
        flat, a, var = self._prepare(x, a, sigma)
        means = self.means.reshape(self.num_components, -1).to(x.device)
        # |x - a mu|^2 = |x|^2 - 2 a <x, mu> + a^2 |mu|^2: (B, K) without a (B, K, d) intermediate.
        sq_dist = ((flat ** 2).sum(1, keepdim=True) - 2 * a * (flat @ means.T)
                   + a ** 2 * (means ** 2).sum(1)[None, :])
        log_norm = -0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.log(self.weights.to(x.device)) + log_norm - sq_dist / (2 * var)

    def log_prob(self, x: torch.Tensor, a: Scalar = 1.0, sigma: Scalar = 0.0) -> torch.Tensor:
        """log q_t(x), shape (B,), float64 (a = 1, sigma = 0 gives the data density)."""
        return torch.logsumexp(self.component_log_prob(x, a, sigma), dim=1)

    def class_logits(self, x: torch.Tensor, a: Scalar, sigma: Scalar) -> torch.Tensor:
        """log q_t(y | x), shape (B, K), float64: the exact noise-aware classifier."""
        return torch.log_softmax(self.component_log_prob(x, a, sigma), dim=1)

    def score(self, x: torch.Tensor, a: Scalar, sigma: Scalar, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """grad_x log q_t(x), or grad_x log q_t(x | y) when labels y are given; shaped like x, float64."""
        flat, a_col, var = self._prepare(x, a, sigma)
        means = self.means.reshape(self.num_components, -1).to(x.device)
        if y is None:
            resp = torch.softmax(self.component_log_prob(x, a, sigma), dim=1)  # q_t(k | x)
            target = a_col * (resp @ means)
        else:
            target = a_col * means[torch.as_tensor(y, device=x.device)]
        return ((target - flat) / var).reshape(x.shape)

    def eps(self, x: torch.Tensor, a: Scalar, sigma: Scalar, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """E[eps | x_t = x] = -sigma_t grad log q_t(x) (conditional on y when given), float64."""
        sigma_t = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape((-1,) + (1,) * (x.ndim - 1))
        return -sigma_t * self.score(x, a, sigma, y)


class _MixtureModule(nn.Module):
    """Shared plumbing: map an original DDPM timestep t to (a_t, sigma_t)."""

    def __init__(self, mixture: GaussianMixture, diffusion):
        super().__init__()
        if not torch.equal(diffusion.timestep_map, torch.arange(diffusion.num_timesteps)):
            raise ValueError("pass the original (not respaced) diffusion: models see original timesteps")
        self.mixture = mixture
        self.register_buffer("alphas_cumprod", torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64))

    def noise_levels(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod[t.long()]
        return abar.sqrt(), (1 - abar).sqrt()


class MixtureDenoiser(_MixtureModule):
    """The exact eps*(x_t, t) of a mixture under a DDPM process: ``model(x_t, t, y=None) -> eps``.

    Args:
        mixture: the data distribution.
        diffusion: the (original, not respaced) process whose abar_t the timesteps index.
        class_conditional: if True the model takes labels y and returns eps*(x_t, t | y), a perfect
            conditional model; the label ``num_components`` then means "no label" (the null class
            of label dropout), so classifier-free guidance can be checked against closed forms.
    """

    def __init__(self, mixture: GaussianMixture, diffusion, class_conditional: bool = False):
        super().__init__(mixture, diffusion)
        #: Samplers pass labels to a model only when it has ``num_classes`` (None: unconditional).
        self.num_classes = mixture.num_components if class_conditional else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        a, sigma = self.noise_levels(t)
        if y is None:
            return self.mixture.eps(x, a, sigma).to(x.dtype)
        if self.num_classes is None:
            raise ValueError("labels given to an unconditional MixtureDenoiser (class_conditional=False)")
        null = y == self.num_classes
        eps = self.mixture.eps(x, a, sigma, torch.where(null, torch.zeros_like(y), y))
        if null.any():
            eps = torch.where(null.reshape((-1,) + (1,) * (x.ndim - 1)), self.mixture.eps(x, a, sigma), eps)
        return eps.to(x.dtype)


class MixtureClassifier(_MixtureModule):
    """The exact noise-aware classifier: ``classifier(x_t, t) -> log q_t(y | x_t)`` as logits."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, sigma = self.noise_levels(t)
        return self.mixture.class_logits(x, a, sigma).to(x.dtype)
