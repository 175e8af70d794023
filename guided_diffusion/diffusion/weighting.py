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
vlb term staying as in improved DDPM / ADM.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from .noise_levels import DiscreteNoiseLevels

MseWeighting = Literal["none", "min-snr", "truncated-snr", "p2"]
WEIGHTINGS: tuple[str, ...] = ("none", "min-snr", "truncated-snr", "p2")


def signal_to_noise(alphas_cumprod: np.ndarray) -> np.ndarray:
    """SNR_t = abar_t / (1 - abar_t) of every timestep (:attr:`.noise_levels.DiscreteNoiseLevels.snrs`)."""
    return DiscreteNoiseLevels(alphas_cumprod).snrs


def mse_weights(alphas_cumprod: np.ndarray, weighting: MseWeighting = "none", *, mean_type: str = "eps",
                min_snr_gamma: float = 5.0, min_snr_floor: float = 0.0, p2_gamma: float = 1.0,
                p2_k: float = 1.0) -> np.ndarray:
    """w_t of the MSE term for every timestep of the schedule (see the module docstring).

    Args:
        alphas_cumprod: abar_t of the (original, not respaced) schedule.
        weighting: ``"none"``, ``"min-snr"``, ``"truncated-snr"`` or ``"p2"``.
        mean_type: what the network predicts (``"eps"``; ``"x0"`` for Min-SNR).
        min_snr_gamma: gamma of Min-SNR (the SNR cap; paper: 5).
        min_snr_floor: the floor f of the x0-space Min-SNR weight (0: the paper's Min-SNR).
        p2_gamma: exponent gamma of P2 (paper: 0.5 or 1).
        p2_k: offset k of P2 (paper: 1).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown MSE weighting {weighting!r}; choose from {WEIGHTINGS}")
    snr = signal_to_noise(alphas_cumprod)
    if weighting == "none":
        return np.ones_like(snr)
    if weighting == "min-snr":
        if min_snr_gamma <= 0 or not 0 <= min_snr_floor <= min_snr_gamma:
            raise ValueError(f"need min_snr_gamma > 0 and 0 <= min_snr_floor <= min_snr_gamma, got "
                             f"{min_snr_gamma}, {min_snr_floor}")
        x0_weight = np.maximum(np.minimum(snr, min_snr_gamma), min_snr_floor)
        if mean_type == "eps":
            return x0_weight / snr
        if mean_type == "x0":
            return x0_weight
        raise ValueError(f"Min-SNR weighting is defined for mean_type 'eps' or 'x0', not {mean_type!r}")
    if weighting == "truncated-snr":
        if mean_type == "eps":
            return np.maximum(snr, 1.0) / snr
        if mean_type == "x0":
            return np.maximum(snr, 1.0)
        raise ValueError(f"truncated-SNR weighting is defined for mean_type 'eps' or 'x0', not {mean_type!r}")
    if mean_type != "eps":
        raise ValueError(f"P2 weighting is defined on the eps loss (mean_type 'eps'), not {mean_type!r}")
    if p2_k <= 0 or p2_gamma < 0:
        raise ValueError(f"P2 needs k > 0 and gamma >= 0, got k={p2_k}, gamma={p2_gamma}")
    return 1.0 / (p2_k + snr) ** p2_gamma
