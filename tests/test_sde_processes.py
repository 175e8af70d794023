"""The SDE views (VE, VP, sub-VP, the DDPM chain) and the eps-model adapter against closed forms."""
import math

import numpy as np
import pytest
import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.mixture import GaussianMixture, MixtureDenoiser
from guided_diffusion.sampling import ClassifierFreeGuidance
from guided_diffusion.sde import (
    SDE,
    VESDE,
    VPSDE,
    DiscreteVPSDE,
    EpsScoreModel,
    GuidedScore,
    SubVPSDE,
    get_sde,
    mixture_score_model,
    pc_sample,
)

LINEAR = GaussianDiffusion.from_schedule("linear", 1000)
SDES = {"ve": VESDE(0.01, 20.0), "vp": VPSDE(), "subvp": SubVPSDE(), "ddpm": DiscreteVPSDE.from_diffusion(LINEAR)}


def test_closed_forms_of_the_three_sdes():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    a, sigma = VESDE(0.01, 50.0).marginal(t)
    torch.testing.assert_close(a, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(sigma, 0.01 * 5000.0 ** t)
    torch.testing.assert_close(VESDE(0.01, 50.0).diffusion(t), 0.01 * 5000.0 ** t * math.sqrt(2 * math.log(5000)))
    b = 0.1 * t + 0.5 * 19.9 * t ** 2
    a, sigma = VPSDE().marginal(t)
    torch.testing.assert_close(a, torch.exp(-b / 2))
    torch.testing.assert_close(sigma, torch.sqrt(1 - torch.exp(-b)))
    a, sigma = SubVPSDE().marginal(t)
    torch.testing.assert_close(a, torch.exp(-b / 2))
    torch.testing.assert_close(sigma, 1 - torch.exp(-b))
    torch.testing.assert_close(SubVPSDE().diffusion(t), torch.sqrt((0.1 + 19.9 * t) * (1 - torch.exp(-2 * b))))


@pytest.mark.parametrize("name", list(SDES))
def test_drift_and_diffusion_generate_the_marginals(name):
    """d log a / dt = f(t) and d sigma^2 / dt = 2 f sigma^2 + g^2, by central differences (off the DDPM grid)."""
    sde, h = SDES[name], 1e-6
    t = torch.tensor([0.1234, 0.4567, 0.8901], dtype=torch.float64)
    (a_lo, s_lo), (a_hi, s_hi) = sde.marginal(t - h), sde.marginal(t + h)
    _, sigma = sde.marginal(t)
    torch.testing.assert_close((a_hi.log() - a_lo.log()) / (2 * h), sde.drift_coeff(t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((s_hi ** 2 - s_lo ** 2) / (2 * h), 2 * sde.drift_coeff(t) * sigma ** 2
                               + sde.diffusion(t) ** 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_forward_simulation_matches_the_marginal(name):
    """Euler–Maruyama on dx = f x dt + g dw (g at step midpoints, 500 steps) from a fixed x_data:
    mean and std of x_t at t = 0.5 and 1 match a_t x_data and sigma_t within 4 standard errors
    (SE of the mean sigma / sqrt(n), of the std sigma / sqrt(2n)) plus 0.3 % for the discretisation."""
    sde, n, steps = SDES[name], 10000, 500
    g = torch.Generator().manual_seed(0)
    x_data = torch.tensor([0.8, -0.5], dtype=torch.float64)
    x = x_data.expand(n, 2).clone()
    if name == "ve":  # the VE state at t = 0 is the data perturbed by sigma_min
        x = x + sde.sigma_min * torch.randn(n, 2, generator=g, dtype=torch.float64)
    h = 1.0 / steps
    for k in range(steps):
        t = k * h
        x = x + sde.drift(x, t) * h + float(sde.diffusion(t + h / 2)) * math.sqrt(h) * torch.randn(
            n, 2, generator=g, dtype=torch.float64)
        if k + 1 in (steps // 2, steps):
            a, sigma = (float(v) for v in sde.marginal((k + 1) * h))
            assert (x.mean(0) - a * x_data).abs().max() < 4 * sigma / math.sqrt(n) + 3e-3 * sigma
            assert (x.std(0) / sigma - 1).abs().max() < 4 / math.sqrt(2 * n) + 3e-3


@pytest.mark.parametrize("name", list(SDES))
def test_transition_inverse_sigma_and_prior(name):
    sde = SDES[name]
    s, t = torch.tensor(0.35, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    r, big_g = sde.transition(s, t)
    (a_s, sigma_s), (a_t, sigma_t) = sde.marginal(s), sde.marginal(t)
    torch.testing.assert_close(r * a_s, a_t)  # composing kernels: a_t = r a_s, sigma_t^2 = r^2 sigma_s^2 + G^2
    torch.testing.assert_close(r ** 2 * sigma_s ** 2 + big_g ** 2, sigma_t ** 2)
    times = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    torch.testing.assert_close(sde.t_from_sigma(sde.sigma(times)), times)
    z = sde.prior_sample((3, 2, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).reshape(3, -1).sum(1)
    torch.testing.assert_close(sde.prior_log_prob(z), expected)


def test_the_ddpm_chain_is_a_vp_sde():
    """Grid point t_i = i / (T - 1) carries abar_i exactly, one grid step of the reverse-diffusion
    transition is the DDPM step (r^2 = alpha_i, G^2 = beta_i), and DDPM's linear schedule is the
    continuous VP SDE with beta in [0.1, 20] up to the discretisation (sigma_t within 1 %)."""
    sde = SDES["ddpm"]
    i = torch.tensor([0, 1, 500, 999])
    a, sigma = sde.marginal(i / 999)
    torch.testing.assert_close(a ** 2, torch.as_tensor(LINEAR.alphas_cumprod)[i])
    torch.testing.assert_close(sigma ** 2, 1 - torch.as_tensor(LINEAR.alphas_cumprod)[i])
    r, big_g = sde.transition(torch.tensor(499 / 999, dtype=torch.float64), torch.tensor(500 / 999))
    torch.testing.assert_close(r ** 2, torch.tensor(1 - LINEAR.betas[500], dtype=torch.float64))
    torch.testing.assert_close(big_g ** 2, torch.tensor(LINEAR.betas[500], dtype=torch.float64))
    t = torch.linspace(0.05, 1, 20, dtype=torch.float64)
    assert ((sde.sigma(t) / VPSDE().sigma(t) - 1).abs() < 0.01).all()
    assert sde.eps == 0.0 and float(sde.sigma(0.0)) == pytest.approx(math.sqrt(LINEAR.betas[0]))


def test_model_time_maps_to_original_timesteps():
    sde = SDES["ddpm"]
    t = torch.tensor([0.0, 0.25, 500.4 / 999, 1.0], dtype=torch.float64)
    torch.testing.assert_close(sde.model_time(t), t * 999)
    assert sde.model_time(t, "round").tolist() == [0, 250, 500, 999]
    lower, upper, w = sde.model_time_bracket(torch.tensor([500.4 / 999], dtype=torch.float64))
    assert (lower.item(), upper.item()) == (500, 501) and w.item() == pytest.approx(0.4)
    torch.testing.assert_close(sde.time_of_model_time(torch.tensor([250.0])),
                               torch.tensor([250 / 999], dtype=torch.float64))
    respaced = LINEAR.respace("ddim10")  # grid steps 0..9 carry the original timesteps 0, 100, ..., 900
    coarse = DiscreteVPSDE.from_diffusion(respaced)
    assert coarse.model_time(torch.tensor([0.0, 1 / 9, 1.0]), "round").tolist() == [0, 100, 900]
    assert float(coarse.sigma(1 / 9)) == pytest.approx(math.sqrt(1 - LINEAR.alphas_cumprod[100]))
    assert float(VPSDE().model_time(0.5)) == pytest.approx(499.5)


MIXTURE = GaussianMixture(torch.tensor([[0.6, 0.0], [-0.3, 0.52], [-0.3, -0.52]]), std=0.1, weights=[0.5, 0.3, 0.2])


def test_adapter_score_is_exact_for_the_discrete_model_at_grid_points():
    """score(x, t_i) = -eps(x, i) / sqrt(1 - abar_i): for the exact eps of a mixture that is the
    mixture's score at a = sqrt(abar_i), sigma = sqrt(1 - abar_i); ``round`` and ``interpolate``
    agree at grid points, and ``interpolate`` is continuous between them."""
    model = MixtureDenoiser(MIXTURE, LINEAR)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i in (0, 37, 999):
        abar = LINEAR.alphas_cumprod[i]
        expected = MIXTURE.score(x, math.sqrt(abar), math.sqrt(1 - abar))
        t = torch.full((6,), i / 999, dtype=torch.float64)
        for mode in ("round", "interpolate"):
            score = EpsScoreModel.from_diffusion(model, LINEAR, timesteps=mode).score(x, t)
            torch.testing.assert_close(score, expected, rtol=1e-6, atol=1e-6)
    smooth = EpsScoreModel.from_diffusion(model, LINEAR, timesteps="interpolate")
    left, right = (smooth.score(x, torch.full((6,), (37 + d) / 999, dtype=torch.float64)) for d in (0.499, 0.501))
    assert (left - right).abs().max() < 1e-2 * left.abs().max()


def test_adapter_reads_learned_sigma_and_x0_models():
    learned = GaussianDiffusion.from_schedule("cosine", 100, var_type="learned_range")
    eps_model = MixtureDenoiser(MIXTURE, learned)
    two_c = lambda x, t, **kw: torch.cat([eps_model(x, t), torch.full_like(x, 7.0)], 1)  # noqa: E731
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.full((4,), 0.4, dtype=torch.float64)
    plain = EpsScoreModel.from_diffusion(eps_model, learned).score(x, t)
    torch.testing.assert_close(EpsScoreModel.from_diffusion(two_c, learned).score(x, t), plain)
    x0_diffusion = GaussianDiffusion.from_schedule("cosine", 100, mean_type="x0")

    def x0_model(x, t, **kw):
        return x0_diffusion.predict_xstart_from_eps(x, t, eps_model(x, t)).double()

    torch.testing.assert_close(EpsScoreModel.from_diffusion(x0_model, x0_diffusion).score(x, t), plain,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="x_prev"):
        EpsScoreModel.from_diffusion(eps_model, GaussianDiffusion.from_schedule("cosine", 100, mean_type="x_prev"))


def test_bad_input_is_rejected_early():
    with pytest.raises(ValueError, match="unknown SDE 'vpp'"):
        get_sde("vpp")
    with pytest.raises(ValueError, match="sigma_min=0.0"):
        VESDE(0.0, 1.0)
    with pytest.raises(ValueError, match="sigma_min=-1"):
        VESDE(-1, 1.0)
    with pytest.raises(ValueError, match="sigma_min=5.0 >= sigma_max=1.0"):
        VESDE(5.0, 1.0)
    with pytest.raises(ValueError, match="beta_min=2.0, beta_max=1.0"):
        VPSDE(2.0, 1.0)
    with pytest.raises(ValueError, match="N .* got 1"):
        SubVPSDE(N=1)
    with pytest.raises(ValueError, match="decrease strictly"):
        DiscreteVPSDE(np.array([0.5, 0.6]))
    assert isinstance(get_sde("ve", sigma_max=10.0), SDE) and get_sde("subvp") == SubVPSDE()
    score_model = mixture_score_model(MIXTURE, VPSDE())
    with pytest.raises(ValueError, match="differs from the score model's"):
        pc_sample(score_model, VESDE(), (2, 2), progress=False)

    class Bare:  # a protocol-only score model: no network to wrap
        sde = VPSDE()

        def score(self, x, t, y=None):
            return -x

        def model_time(self, t):
            return t

    with pytest.raises(ValueError, match="wraps the network"):
        GuidedScore(Bare(), torch.zeros(2, dtype=torch.long), ClassifierFreeGuidance(2.0, null_label=3))
