"""Exact likelihood through the probability-flow ODE against the mixture's closed-form density."""
import math

import pytest
import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.mixture import GaussianMixture, MixtureDenoiser
from guided_diffusion.sde import VESDE, VPSDE, EpsScoreModel, SubVPSDE, mixture_score_model, ode_encode, ode_likelihood

MIXTURE = GaussianMixture(torch.tensor([[0.6, 0.0], [-0.3, 0.52], [-0.3, -0.52]]), std=0.1, weights=[0.5, 0.3, 0.2])
SDES = {"ve": VESDE(0.01, 50.0), "vp": VPSDE(), "subvp": SubVPSDE()}
DATA = MIXTURE.sample(400, generator=torch.Generator().manual_seed(1))[0].double()


def exact_log_prob(sde, x, t):
    """log p_t(x) of the mixture at the time the integration starts (a = 1, sigma = sigma_min for VE;
    for VP / sub-VP at t = 1e-5 this is the data density to within 1e-3 nats)."""
    a, sigma = sde.marginal(t)
    return MIXTURE.log_prob(x, a, sigma)


@pytest.mark.parametrize("name", list(SDES))
def test_exact_trace_likelihood_matches_the_mixture_density(name):
    """With the full Jacobian trace the only error is the solver's (rtol = atol = 1e-5) and, for VE,
    the N(0, 50^2) prior's mismatch with p_1 (~0.003 nats): measured max |error| 0.0032 (VP),
    0.0034 (sub-VP), 0.0088 nats (VE), mean |error| <= 3.4e-5; bound tested: 0.02 nats per sample,
    0.002 on average."""
    sde = SDES[name]
    out = ode_likelihood(mixture_score_model(MIXTURE, sde), None, DATA, probe="exact", num_bins=None)
    error = out["log_prob"] - exact_log_prob(sde, DATA, 1e-5)
    assert error.abs().max() < 0.02 and error.mean().abs() < 0.002, (error.abs().max(), error.mean())
    assert 20 < out["nfe"] < 300
    if name != "ve":
        assert (MIXTURE.log_prob(DATA) - exact_log_prob(sde, DATA, 1e-5)).abs().max() < 1e-3
    torch.testing.assert_close(out["bpd"], -out["log_prob"] / (2 * math.log(2)))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased_within_its_error(probe):
    """Per sample, log p^ - log p = e^T A e - tr A for A = int dv/dx dt: zero mean, variance
    2 (A_12 + A_21)^2 (Rademacher, 2-d) or 2 |A_sym|_F^2 (Gaussian). Measured per-sample error
    sd: 0.61 (Rademacher), 3.8 nats (Gaussian). Tested: the mean error over n samples is within
    4 sd / sqrt(n) of zero plus the solver's 0.002, and averaging 4 probes halves the sd."""
    sde = SDES["vp"]
    model = mixture_score_model(MIXTURE, sde)
    exact = exact_log_prob(sde, DATA, 1e-5)
    one = ode_likelihood(model, None, DATA, probe=probe, num_bins=None, generator=torch.Generator().manual_seed(0))
    error = one["log_prob"] - exact
    assert error.mean().abs() < 4 * error.std() / math.sqrt(len(error)) + 0.002, (error.mean(), error.std())
    four = ode_likelihood(model, None, DATA, probe=probe, num_probes=4, num_bins=None,
                          generator=torch.Generator().manual_seed(0))
    assert 0.35 < (four["log_prob"] - exact).std() / error.std() < 0.7


def discrete_log_prob(x, half_bin):
    """log P(bin of x) for the mixture: per component a product of normal CDF differences."""
    means = MIXTURE.means.reshape(3, -1)
    normal = torch.distributions.Normal(0.0, 1.0)
    upper = normal.cdf((x[:, None, :] + half_bin - means) / MIXTURE.std)
    lower = normal.cdf((x[:, None, :] - half_bin - means) / MIXTURE.std)
    return torch.logsumexp(torch.log(MIXTURE.weights) + torch.log(upper - lower).sum(-1), dim=1)


def test_bits_per_dim_of_256_level_data():
    """Data on the grid -1 + 2k/255 (the VLB's bins). (1) The ODE's bpd of the dequantised point x~
    is -log2 p(x~) / D + log2(127.5) to the solver's error. (2) That offset makes E_u[bpd] an upper
    bound on the exact discrete NLL -log2 P(bin) / D, here within 0.001 bits/dim (the Jensen gap,
    ~4e-4; score_sde's offset 7 would be 0.0056 off, its [0, 1] offset 8 a whole bit). (3) The VLB of
    ``calc_bpd_loop`` bounds the same quantity: with the exact eps and fixed variances it is
    0.46 bits/dim looser here (the reverse kernels are not Gaussian for data of std 0.1)."""
    x = ((DATA[:128].clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    sde = SDES["vp"]
    out = ode_likelihood(mixture_score_model(MIXTURE, sde), None, x, probe="exact",
                         generator=torch.Generator().manual_seed(0))
    assert 0 < (out["x"] - x).abs().max() <= 1 / 255
    formula = -exact_log_prob(sde, out["x"], 1e-5) / (2 * math.log(2)) + math.log2(127.5)
    assert (out["bpd"] - formula).abs().max() < 0.005
    truth = -discrete_log_prob(x, 1 / 255) / (2 * math.log(2))
    u = (torch.rand((256,) + x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1) / 255
    dequantised = torch.stack([-MIXTURE.log_prob(x + du) for du in u]).mean(0) / (2 * math.log(2)) + math.log2(127.5)
    assert 0 < (dequantised - truth).mean() < 0.001, (dequantised - truth).mean()
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, var_type="fixed_small")
    vlb = diffusion.calc_bpd_loop(MixtureDenoiser(MIXTURE, diffusion), x.float(), clip_denoised=False,
                                  generator=torch.Generator().manual_seed(0))["total_bpd"]
    assert truth.mean() < vlb.mean() < truth.mean() + 1.0


def test_ddpm_model_likelihood_and_latent_through_the_adapter():
    """A DDPM eps model (eps interpolated between timesteps) gets the density of its VP-SDE view:
    within the solver error of the exact p_0 at t = 0 (sigma_0 = sqrt(beta_1) = 0.01); the latent
    of ode_encode is the likelihood's z."""
    diffusion = GaussianDiffusion.from_schedule("cosine", 1000)
    model = EpsScoreModel.from_diffusion(MixtureDenoiser(MIXTURE, diffusion), diffusion, timesteps="interpolate")
    x = DATA[:100]
    out = ode_likelihood(model, None, x, probe="exact", num_bins=None)
    a, sigma = model.sde.marginal(0.0)
    assert (out["log_prob"] - MIXTURE.log_prob(x, a, sigma)).abs().max() < 0.02
    torch.testing.assert_close(ode_encode(model, None, x, eps=0.0)["z"], out["z"], atol=5e-3, rtol=0)


def test_bad_likelihood_options():
    model = mixture_score_model(MIXTURE, SDES["vp"])
    with pytest.raises(ValueError, match="unknown probe 'normal'"):
        ode_likelihood(model, None, DATA[:2], probe="normal")
    with pytest.raises(ValueError, match="num_probes must be a positive integer, got 0"):
        ode_likelihood(model, None, DATA[:2], num_probes=0)
    with pytest.raises(ValueError, match="atol must be a positive number"):
        ode_likelihood(model, None, DATA[:2], atol=-1.0)
    with pytest.raises(ValueError, match="unknown ODE method 'Euler'"):
        ode_likelihood(model, None, DATA[:2], method="Euler")
