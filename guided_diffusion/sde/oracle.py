"""The Gaussian-mixture oracle on continuous time: exact eps, score and noisy classifier for any SDE.

For x_t = a_t x_0 + sigma_t eps (``sde.marginal(t)``) the noisy mixture is known in closed form
(see :mod:`guided_diffusion.mixture`). :class:`MixtureEpsNetwork` has the network signature
``network(x_t, t_model, y=None) -> eps`` on the SDE's model-time axis, so
``EpsScoreModel(MixtureEpsNetwork(mixture, sde), sde)`` (:func:`mixture_score_model`) is an exact
score model; :class:`MixtureTimeClassifier` is the exact noise-aware classifier on the same axis.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..mixture import GaussianMixture
from .models import EpsScoreModel
from .sdes import SDE


class MixtureEpsNetwork(nn.Module):
    """Exact eps*(x_t, t_model) = -sigma_t grad log q_t(x) of a mixture under ``sde``.

    Args:
        mixture: the data distribution.
        sde: whose model time the network is called with.
        class_conditional: take labels y; label ``num_components`` is the null label (as
            :class:`~guided_diffusion.mixture.MixtureDenoiser`), for classifier-free guidance.
    """

    def __init__(self, mixture: GaussianMixture, sde: SDE, class_conditional: bool = False):
        super().__init__()
        self.mixture, self.sde = mixture, sde
        self.num_classes = mixture.num_components if class_conditional else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        a, sigma = self.sde.model_noise_level(t)
        if y is None:
            return self.mixture.eps(x, a, sigma).to(x.dtype)
        if self.num_classes is None:
            raise ValueError("labels given to an unconditional MixtureEpsNetwork (class_conditional=False)")
        null = y == self.num_classes
        eps = self.mixture.eps(x, a, sigma, torch.where(null, torch.zeros_like(y), y))
        if null.any():
            eps = torch.where(null.reshape((-1,) + (1,) * (x.ndim - 1)), self.mixture.eps(x, a, sigma), eps)
        return eps.to(x.dtype)


class MixtureTimeClassifier(nn.Module):
    """The exact noise-aware classifier ``classifier(x_t, t_model) -> log q_t(y | x_t)`` for ``sde``."""

    def __init__(self, mixture: GaussianMixture, sde: SDE):
        super().__init__()
        self.mixture, self.sde = mixture, sde

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, sigma = self.sde.model_noise_level(t)
        return self.mixture.class_logits(x, a, sigma).to(x.dtype)


def mixture_score_model(mixture: GaussianMixture, sde: SDE, class_conditional: bool = False) -> EpsScoreModel:
    """The exact score model of a mixture under ``sde`` (continuous timesteps)."""
    return EpsScoreModel(MixtureEpsNetwork(mixture, sde, class_conditional), sde)


__all__ = ["MixtureEpsNetwork", "MixtureTimeClassifier", "mixture_score_model"]
