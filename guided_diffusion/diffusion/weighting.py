"""Per-timestep weights of the MSE term: L = w_t * ||target - prediction||^2 (+ L_vlb unchanged).

With SNR_t = abar_t / (1 - abar_t) (the signal-to-noise ratio of q(x_t | x_0)):

- ``"none"``: w_t = 1 (L_simple of DDPM and ADM).
- ``"min-snr"`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"):
  the x0-space weight min(SNR_t, gamma), written for the network's target. An eps-prediction
  ||eps - eps_theta||^2 equals SNR_t ||x0 - x0_theta||^2, so for ``mean_type="eps"``
  w_t = min(SNR_t, gamma) / SNR_t, and for ``mean_type="x0"`` w_t = min(SNR_t, gamma).
  Low-noise steps (SNR_t > gamma) are down-weighted, so they stop dominating the gradient;
  gamma = 5 in the paper. ``min_snr_floor`` f > 0 also keeps the x0-space weight from falling below
  f at high noise: max(min(SNR_t, gamma), f) (with f = 1, Min-SNR's cap on Salimans & Ho's
  truncated SNR below): the high-noise steps, which set the global layout, keep the x0 loss.
- ``"truncated-snr"`` (Salimans & Ho 2022, "Progressive Distillation", eq. 10): the x0-space
  weight max(SNR_t, 1): the eps loss where the signal dominates (SNR_t > 1), the x0 loss where the
  noise does. For ``mean_type="x0"`` w_t = max(SNR_t, 1), for ``"eps"`` w_t = max(SNR_t, 1) / SNR_t.
  With an x0 target it keeps the high-noise steps, which set the global layout (and the black
  background of MNIST), from being starved as they are under the eps loss's SNR_t weight.
- ``"p2"`` (Choi et al. 2022, "Perception Prioritized Training of Diffusion Models"), on the eps
  loss: w_t = 1 / (k + SNR_t)^gamma, k = 1 and gamma in {0.5, 1} in the paper (gamma = 0 is L_simple).

The weights are per original timestep (float64 as the schedule, float32 once looked up), and they
touch only the MSE term: with a learned variance the hybrid loss is w_t * L_simple + L_vlb, the
vlb term staying as in improved DDPM / ADM. :class:`LossWeighting` holds the kind and its
parameters (checked when built); :meth:`LossWeighting.weights` computes w_t.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping

import numpy as np

from ..option_groups import coerce_group
from .noise_levels import DiscreteNoiseLevels

MseWeighting = Literal["none", "min-snr", "truncated-snr", "p2"]
WEIGHTINGS: tuple[str, ...] = ("none", "min-snr", "truncated-snr", "p2")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def signal_to_noise(alphas_cumprod: np.ndarray) -> np.ndarray:
    """SNR_t = abar_t / (1 - abar_t) of every timestep (:attr:`.noise_levels.DiscreteNoiseLevels.snrs`)."""
    return DiscreteNoiseLevels(alphas_cumprod).snrs


@dataclasses.dataclass(frozen=True)
class LossWeighting:
    """The weight w_t of the MSE term, L = w_t * ||target - prediction||^2 (+ L_vlb unchanged).

    With SNR_t = abar_t / (1 - abar_t), for an eps target (``mean_type="eps"``; x0 target: drop the
    division by SNR_t):

    - ``none``: w_t = 1 (L_simple of DDPM and ADM);
    - ``min-snr``: w_t = max(min(SNR_t, min_snr_gamma), min_snr_floor) / SNR_t (Min-SNR-gamma);
    - ``truncated-snr``: w_t = max(SNR_t, 1) / SNR_t (the x0 loss where the noise dominates);
    - ``p2``: w_t = 1 / (p2_k + SNR_t)^p2_gamma (eps target only).

    Every field is checked whatever the kind; :meth:`weights` computes w_t for a schedule.

    Args:
        kind: ``none`` (w_t = 1), ``min-snr`` (max(min(SNR_t, gamma), f) / SNR_t), ``truncated-snr``
            (max(SNR_t, 1) / SNR_t) or ``p2`` (1 / (k + SNR_t)^gamma); with an x0 target ``min-snr`` and
            ``truncated-snr`` drop the division by SNR_t.
        min_snr_gamma: the SNR cap gamma > 0 of ``min-snr`` (paper: 5).
        min_snr_floor: the floor f of ``min-snr``'s x0-space weight, 0 <= f <= gamma (0: the paper's
            Min-SNR; 1 keeps the x0 loss at high noise).
        p2_gamma: the exponent gamma >= 0 of ``p2`` (paper: 0.5 or 1; 0 is L_simple).
        p2_k: the offset k > 0 of ``p2`` (paper: 1).
    """

    kind: MseWeighting = "none"
    min_snr_gamma: float = 5.0
    min_snr_floor: float = 0.0
    p2_gamma: float = 1.0
    p2_k: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in WEIGHTINGS:
            raise ValueError(f"unknown MSE weighting {self.kind!r} (loss_weighting.kind): choose from "
                             f"{', '.join(WEIGHTINGS)}")
        if not _is_number(self.min_snr_gamma) or self.min_snr_gamma <= 0:
            raise ValueError(f"loss_weighting.min_snr_gamma must be a number > 0, got {self.min_snr_gamma!r}")
        if not _is_number(self.min_snr_floor) or not 0 <= self.min_snr_floor <= self.min_snr_gamma:
            raise ValueError(f"loss_weighting.min_snr_floor must lie in [0, min_snr_gamma = {self.min_snr_gamma}], "
                             f"got {self.min_snr_floor!r}")
        if not _is_number(self.p2_gamma) or self.p2_gamma < 0:
            raise ValueError(f"loss_weighting.p2_gamma must be a number >= 0, got {self.p2_gamma!r}")
        if not _is_number(self.p2_k) or self.p2_k <= 0:
            raise ValueError(f"loss_weighting.p2_k must be a number > 0, got {self.p2_k!r}")

    @classmethod
    def coerce(cls, value: LossWeighting | Mapping[str, Any]) -> LossWeighting:
        """``value`` itself, or the weighting its dict form (``{"kind": "min-snr", ...}``) gives."""
        return coerce_group(cls, value, "loss_weighting")

    @property
    def is_uniform(self) -> bool:
        """w_t = 1 at every t (``kind: none``): the loss needs no weights."""
        return self.kind == "none"

    def weights(self, alphas_cumprod: np.ndarray, mean_type: str = "eps") -> np.ndarray:
        """w_t for every timestep of the (original, not respaced) schedule ``alphas_cumprod``.

        Args:
            alphas_cumprod: abar_t of the schedule.
            mean_type: what the network predicts, ``"eps"`` or ``"x0"`` (``p2``: ``"eps"`` only).
        """
        snr = signal_to_noise(alphas_cumprod)
        if self.kind == "none":
            return np.ones_like(snr)
        if self.kind == "min-snr":
            x0_weight = np.maximum(np.minimum(snr, self.min_snr_gamma), self.min_snr_floor)
            if mean_type == "eps":
                return x0_weight / snr
            if mean_type == "x0":
                return x0_weight
            raise ValueError(f"Min-SNR weighting is defined for mean_type 'eps' or 'x0', not {mean_type!r}")
        if self.kind == "truncated-snr":
            if mean_type == "eps":
                return np.maximum(snr, 1.0) / snr
            if mean_type == "x0":
                return np.maximum(snr, 1.0)
            raise ValueError(f"truncated-SNR weighting is defined for mean_type 'eps' or 'x0', not {mean_type!r}")
        if mean_type != "eps":
            raise ValueError(f"P2 weighting is defined on the eps loss (mean_type 'eps'), not {mean_type!r}")
        return 1.0 / (self.p2_k + snr) ** self.p2_gamma


def mse_weights(alphas_cumprod: np.ndarray, weighting: MseWeighting = "none", *, mean_type: str = "eps",
                min_snr_gamma: float = 5.0, min_snr_floor: float = 0.0, p2_gamma: float = 1.0,
                p2_k: float = 1.0) -> np.ndarray:
    """w_t of the MSE term for every timestep of the schedule: :meth:`LossWeighting.weights`.

    Args:
        alphas_cumprod: abar_t of the (original, not respaced) schedule.
        weighting: ``"none"``, ``"min-snr"``, ``"truncated-snr"`` or ``"p2"``.
        mean_type: what the network predicts (``"eps"``; ``"x0"`` for Min-SNR).
        min_snr_gamma: gamma of Min-SNR (the SNR cap; paper: 5).
        min_snr_floor: the floor f of the x0-space Min-SNR weight (0: the paper's Min-SNR).
        p2_gamma: exponent gamma of P2 (paper: 0.5 or 1).
        p2_k: offset k of P2 (paper: 1).
    """
    weighting = LossWeighting(kind=weighting, min_snr_gamma=min_snr_gamma, min_snr_floor=min_snr_floor,
                              p2_gamma=p2_gamma, p2_k=p2_k)
    return weighting.weights(alphas_cumprod, mean_type)
