"""``gd demo``: the main job on the embedded default.

Until the training and sampling layers land this runs the diffusion core on the Gaussian-mixture
oracle: the variational bound in bits/dim next to its analytic value.
"""
from __future__ import annotations

import math

import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.mixture import GaussianMixture, MixtureDenoiser


def demo(num_samples: int = 500, steps: int = 1000, seed: int = 0) -> dict:
    """Compute the full bound of a 4-point mixture on the pixel grid with the exact denoiser.

    Args:
        num_samples: data points to evaluate.
        steps: diffusion steps T (linear schedule).
        seed: random seed.
    """
    diffusion = GaussianDiffusion.from_schedule("linear", steps, var_type="fixed_small")
    means = -1 + 2 * torch.tensor([[40, 40], [40, 200], [200, 40], [200, 200]], dtype=torch.float64) / 255
    mixture = GaussianMixture(means, std=0.0)
    x0, _ = mixture.sample(num_samples, generator=torch.Generator().manual_seed(seed))
    out = diffusion.calc_bpd_loop(MixtureDenoiser(mixture, diffusion), x0,
                                  generator=torch.Generator().manual_seed(seed + 1), progress=True)
    result = {"total_bpd": out["total_bpd"].mean().item(), "prior_bpd": out["prior_bpd"].mean().item(),
              "decoder_bpd": out["vb"][:, 0].mean().item(), "entropy_bpd": math.log2(4) / 2}
    for key, value in result.items():
        print(f"{key:>12}: {value:.4f}")
    return result
