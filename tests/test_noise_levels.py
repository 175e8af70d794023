"""The one schedule view (alpha, sigma, SNR, lambda) and the one model-output view (eps, x0, score, v)."""
import math

import numpy as np
import pytest
import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.diffusion.noise_levels import DiscreteNoiseLevels
from guided_diffusion.diffusion.prediction import ModelPrediction
from guided_diffusion.sde import VESDE, VPSDE, DiscreteVPSDE


def _cosine_abar(t: float, s: float = 0.008) -> float:
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


@pytest.mark.parametrize("k", [0, 1, 250, 500, 998])
def test_discrete_levels_of_the_cosine_schedule_are_its_closed_form(k):
    levels = GaussianDiffusion.from_schedule("cosine", 1000).noise_levels
    abar = _cosine_abar((k + 1) / 1000) / _cosine_abar(0.0)  # the product of (1 - beta) telescopes (no clipping)
    alpha, sigma = levels.marginal(k)
    assert alpha == pytest.approx(math.sqrt(abar), rel=1e-12)
    assert sigma == pytest.approx(math.sqrt(1 - abar), rel=1e-9)
    assert levels.snr(k) == pytest.approx(abar / (1 - abar), rel=1e-9)
    assert levels.log_snr(k) == pytest.approx(0.5 * math.log(abar / (1 - abar)), rel=1e-9, abs=1e-12)


def test_discrete_levels_are_consistent_and_what_the_process_uses():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    levels = diffusion.noise_levels
    np.testing.assert_allclose(levels.alphas ** 2 + levels.sigmas ** 2, 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(levels.snrs, levels.alphas ** 2 / levels.sigmas ** 2, rtol=1e-12)
    np.testing.assert_allclose(levels.log_snrs, 0.5 * np.log(levels.snrs), rtol=1e-12, atol=1e-14)
    assert np.all(np.diff(levels.log_snrs) < 0)
    np.testing.assert_array_equal(diffusion.sqrt_alphas_cumprod, levels.alphas)
    np.testing.assert_array_equal(diffusion.sqrt_one_minus_alphas_cumprod, levels.sigmas)
    respaced = diffusion.respace("ddim10")
    np.testing.assert_allclose(respaced.noise_levels.alphas_cumprod, diffusion.alphas_cumprod[respaced.timestep_map],
                               rtol=1e-12)
    assert levels.alphas[0] == pytest.approx(math.sqrt(1 - 1e-4), rel=1e-12)  # DDPM's beta_1 = 1e-4


def test_continuous_levels_of_the_sdes_are_their_closed_forms():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    vp = VPSDE()
    big_b = 0.1 * t + (20 - 0.1) * t ** 2 / 2
    torch.testing.assert_close(vp.alpha(t), torch.exp(-big_b / 2))
    torch.testing.assert_close(vp.snr(t), torch.exp(-big_b) / (1 - torch.exp(-big_b)))
    torch.testing.assert_close(vp.log_snr(t), -big_b / 2 - 0.5 * torch.log1p(-torch.exp(-big_b)))
    ve = VESDE(sigma_min=0.01, sigma_max=50.0)
    sigma = 0.01 * (50 / 0.01) ** t
    torch.testing.assert_close(ve.log_snr(t), -torch.log(sigma))
    abar = GaussianDiffusion.from_schedule("linear", 100).alphas_cumprod
    discrete = DiscreteVPSDE(abar)
    grid = torch.tensor([3, 50, 99], dtype=torch.float64) / 99
    torch.testing.assert_close(discrete.snr(grid), torch.as_tensor(DiscreteNoiseLevels(abar).snrs[[3, 50, 99]]))


def test_model_prediction_converts_between_every_parameterization():
    generator = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64) for _ in range(2))
    alpha = torch.tensor([0.99, 0.7, 0.3, 0.05], dtype=torch.float64).reshape(4, 1, 1, 1)
    sigma = (1 - alpha ** 2).sqrt()
    x = alpha * x0 + sigma * eps
    score = -eps / sigma
    v = alpha * eps - sigma * x0
    truth = {"eps": eps, "x0": x0, "score": score, "v": v}
    for kind, value in truth.items():
        view = ModelPrediction(kind, value, x, alpha, sigma)
        for other, expected in truth.items():
            torch.testing.assert_close(getattr(view, other), expected, rtol=1e-10, atol=1e-10,
                                       msg=f"{other} from {kind}")
    with pytest.raises(ValueError, match="unknown parameterization 'velocity'"):
        ModelPrediction("velocity", v, x, alpha, sigma)
