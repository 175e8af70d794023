"""How wide the Langevin corrector makes samples, against its closed form (the figures of the README's PC note).

1. The corrector alone at a fixed time on a Gaussian p_t = N(0, s^2 I) (VE, t = 0.3, 300 steps): the std over
   s, against the closed form sqrt(1 + r^2) that holds when the norms concentrate.
2. The full PC sampler (200 steps) on the 3-component oracle of the tests (std 0.1) in 2-d and in 3x4x4: the
   within-component std, with per-sample and batch norms and without a corrector.

    python benchmarks/pc_corrector_spread.py
"""
from __future__ import annotations

import math

import torch

from guided_diffusion.mixture import GaussianMixture
from guided_diffusion.sde import VESDE, VPSDE, mixture_score_model, pc_sample
from guided_diffusion.sde.models import GuidedScore
from guided_diffusion.sde.samplers import langevin_step


def corrector_alone(shape, n: int, snr: float, norms: str) -> float:
    sde = VESDE(0.01, 20.0)
    spread = math.sqrt(0.1 ** 2 + float(sde.sigma(0.3)) ** 2)
    score = GuidedScore(mixture_score_model(GaussianMixture(torch.zeros(1, *shape), std=0.1), sde), None, None)
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(n, *shape, generator=generator) * spread, torch.full((n,), 0.3, dtype=torch.float64)
    for _ in range(300):
        x = langevin_step(score, x, t, snr, torch.tensor(1.0), generator, norms)
    return x.double().std().item() / spread


def pc_spread(shape, n: int, sde, norms: str, corrector: str) -> float:
    means = torch.rand(3, *shape, generator=torch.Generator().manual_seed(5)) * 1.2 - 0.6
    mixture = GaussianMixture(means, std=0.1, weights=[0.5, 0.3, 0.2])
    x = pc_sample(mixture_score_model(mixture, sde), None, (n, *shape), steps=200, langevin_norms=norms,
                  corrector=corrector, generator=torch.Generator().manual_seed(0), progress=False)
    nearest = torch.cdist(x.reshape(n, -1).double(), means.reshape(3, -1).double()).argmin(1)
    return (x.double() - means[nearest].double()).std().item()


def main() -> None:
    torch.set_num_threads(2)
    print("corrector alone, std / s (closed form sqrt(1 + r^2))")
    for shape, n in (((2,), 4000), ((3, 16, 16), 400)):
        for snr in (0.16, 0.5):
            row = {norms: corrector_alone(shape, n, snr, norms) for norms in ("sample", "batch")}
            print(f"  D={math.prod(shape):4d} snr={snr:.2f}: per-sample {row['sample']:7.3f}  batch {row['batch']:.3f}"
                  f"  closed form {math.sqrt(1 + snr ** 2):.3f}")
    print("PC sampler, 200 steps, within-component std (truth 0.100)")
    for shape, n in (((2,), 6000), ((3, 4, 4), 2000)):
        for name, sde in (("ve", VESDE(0.01, 20.0)), ("vp", VPSDE())):
            row = [pc_spread(shape, n, sde, "sample", "langevin"), pc_spread(shape, n, sde, "batch", "langevin"),
                   pc_spread(shape, n, sde, "sample", "none")]
            print(f"  D={math.prod(shape):3d} {name}: per-sample {row[0]:.3f}  batch {row[1]:.3f}  "
                  f"predictor alone {row[2]:.3f}")


if __name__ == "__main__":
    main()
