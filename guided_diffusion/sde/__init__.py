"""The score-SDE family on the diffusion core (Song & Ermon 2019/2020; Song et al. 2021), plain PyTorch.

- SDEs (:mod:`.sdes`): VE, VP, sub-VP and the DDPM chain as a VP SDE, with drift/diffusion,
  closed-form marginals ``marginal(t) -> (a_t, sigma_t)``, prior sampling and log-density.
- Score models (:mod:`.models`): the ``ScoreModel`` protocol and ``EpsScoreModel``, which makes any
  eps-network of the project (a DDPM/ADM model with its diffusion, an NCSN, the mixture oracle) a
  score model, score = -eps / sigma_t.
- Samplers (:mod:`.samplers`, :mod:`.ode`): reverse-SDE Euler–Maruyama, reverse diffusion,
  predictor–corrector with a Langevin corrector, the probability-flow ODE (adaptive, scipy),
  annealed Langevin dynamics; one signature ``(score_model, sde, shape | x_T, *, y, guidance,
  steps, generator, progress, callback, **options) -> Tensor``; every guidance kind of
  :mod:`guided_diffusion.guidance` applies. By name: :data:`SCORE_SAMPLERS` (:mod:`.registry`).
- Likelihood: ``ode_likelihood`` (bits/dim comparable with ``GaussianDiffusion.calc_bpd_loop``).
- NCSN (:mod:`.ncsn`): noise levels (Techniques 1-2 of Song & Ermon 2020), ``ncsn_loss``, and a
  noise-conditional score network on the project's UNet.

Nothing here imports :mod:`guided_diffusion.sampling` (which stands on this package: its
``sde_bridge`` gives these samplers the DDPM sampler signature, and its ``controllable`` module
holds inpainting / colorization / interpolation for both families).
"""
from .models import EpsScoreModel, GuidedScore, ScoreModel, tweedie_x0
from .ncsn import (
    NoiseConditionalScoreNetwork,
    gamma_for_dimension,
    geometric_sigmas,
    langevin_step_size,
    langevin_variance_ratio,
    max_pairwise_distance,
    ncsn_loss,
    ncsn_sigmas,
    sigma_overlap,
)
from .ode import ode_encode, ode_likelihood, ode_sample
from .oracle import MixtureEpsNetwork, MixtureTimeClassifier, mixture_score_model
from .registry import SCORE_SAMPLERS, ScoreSamplerName, ScoreSamplerSpec
from .samplers import annealed_langevin_sample, euler_maruyama_sample, pc_sample, reverse_diffusion_sample
from .sdes import SDE, DiscreteVPSDE, SDEName, SubVPSDE, VESDE, VPSDE, get_sde

__all__ = [
    "SDE", "SDEName", "VESDE", "VPSDE", "SubVPSDE", "DiscreteVPSDE", "get_sde",
    "ScoreModel", "EpsScoreModel", "GuidedScore", "tweedie_x0",
    "SCORE_SAMPLERS", "ScoreSamplerName", "ScoreSamplerSpec",
    "pc_sample", "euler_maruyama_sample", "reverse_diffusion_sample", "annealed_langevin_sample",
    "ode_sample", "ode_likelihood", "ode_encode",
    "NoiseConditionalScoreNetwork", "gamma_for_dimension", "geometric_sigmas", "max_pairwise_distance",
    "ncsn_loss", "ncsn_sigmas", "sigma_overlap", "langevin_step_size", "langevin_variance_ratio",
    "MixtureEpsNetwork", "MixtureTimeClassifier", "mixture_score_model",
]
