"""GaussianDiffusion against closed forms and the Gaussian-mixture oracle."""
import math

import numpy as np
import pytest
import torch

from guided_diffusion.diffusion import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from guided_diffusion.mixture import GaussianMixture, MixtureDenoiser

T = 1000


@pytest.fixture(scope="module")
def linear():
    return GaussianDiffusion.from_schedule("linear", T)


def bin_centres(k):
    return -1 + 2 * torch.as_tensor(k, dtype=torch.float64) / 255


# ---------------------------------------------------------------------------------- forward process
def test_q_sample_moments_match_the_one_step_chain(linear):
    """Running q(x_t | x_{t-1}) t times gives the closed form N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
    gen = torch.Generator().manual_seed(0)
    n, x0 = 200_000, 0.7
    x = torch.full((n,), x0, dtype=torch.float64)
    for t, beta in enumerate(linear.betas[:300]):
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(n, generator=gen, dtype=torch.float64)
        if t in (0, 99, 299):
            mean, var, log_var = linear.q_mean_variance(torch.full((1, 1), x0), torch.tensor([t]))
            se_mean, se_var = math.sqrt(var.item() / n), var.item() * math.sqrt(2 / n)
            assert abs(x.mean().item() - mean.item()) < 5 * se_mean
            assert abs(x.var().item() - var.item()) < 5 * se_var
            assert log_var.item() == pytest.approx(math.log(var.item()), rel=1e-5)
    x_t = linear.q_sample(torch.full((n, 1), x0), torch.full((n,), 299),
                          noise=torch.randn(n, 1, generator=gen))
    assert x_t.mean().item() == pytest.approx(x.mean().item(), abs=0.01)
    assert x_t.var().item() == pytest.approx(x.var().item(), rel=0.02)


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_posterior_is_the_bayes_product_of_two_gaussians(linear, t):
    """q(x_{t-1} | x_t, x_0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1 - abar_{t-1})"""
    x0, xt = torch.tensor([[0.3, -0.8]]), torch.tensor([[1.1, 0.2]])
    beta, abar_prev = linear.betas[t], linear.alphas_cumprod_prev[t]
    alpha = 1 - beta
    # As a density in x_{t-1}, the likelihood term is N(x_t / sqrt(alpha), beta / alpha).
    prec1, mu1 = alpha / beta, xt.double() / math.sqrt(alpha)
    prec2, mu2 = 1 / (1 - abar_prev), math.sqrt(abar_prev) * x0.double()
    var = 1 / (prec1 + prec2)
    mean = var * (prec1 * mu1 + prec2 * mu2)
    got_mean, got_var, got_log_var = linear.q_posterior_mean_variance(x0, xt, torch.tensor([t]))
    torch.testing.assert_close(got_mean.double(), mean, rtol=1e-5, atol=1e-6)
    assert got_var.item() == pytest.approx(var, rel=1e-5)
    assert got_log_var.item() == pytest.approx(math.log(var), rel=1e-5)


def test_posterior_log_variance_is_clipped_at_t0(linear):
    _, var, log_var = linear.q_posterior_mean_variance(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0]))
    assert var.item() == 0.0
    assert log_var.item() == pytest.approx(math.log(linear.posterior_variance[1]), rel=1e-6)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "x_prev"])
def test_mean_parameterisations_agree(linear, mean_type):
    """The same true x_0 expressed as eps, x_0 or mu~ gives the same p(x_{t-1} | x_t)."""
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1
    t = torch.tensor([0, 5, 400, 999])
    noise = torch.randn(x0.shape, generator=gen)
    xt = linear.q_sample(x0, t, noise)
    diffusion = GaussianDiffusion(linear.betas, mean_type=mean_type, var_type="fixed_small")
    output = {"eps": noise, "x0": x0, "x_prev": linear.q_posterior_mean_variance(x0, xt, t)[0]}[mean_type]
    out = diffusion.interpret_output(output, xt, t, clip_denoised=False)
    # Inverting mu~ for x_0 divides by coef1 ~ 1e-4 near t = T in float32, hence the looser x_prev bound.
    atol = 1e-2 if mean_type == "x_prev" else 2e-3
    torch.testing.assert_close(out["pred_xstart"], x0, rtol=1e-3, atol=atol)
    torch.testing.assert_close(out["mean"], linear.q_posterior_mean_variance(x0, xt, t)[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(linear.predict_eps_from_xstart(xt, t, linear.predict_xstart_from_eps(xt, t, noise)),
                               noise, rtol=1e-3, atol=1e-3)


def test_clipping_and_denoised_fn_apply_to_pred_xstart(linear):
    xt, t = torch.full((1, 1, 2, 2), 3.0), torch.tensor([10])
    out = linear.interpret_output(torch.zeros_like(xt), xt, t, clip_denoised=True)
    assert out["pred_xstart"].max().item() == 1.0
    out = linear.interpret_output(torch.zeros_like(xt), xt, t, clip_denoised=False, denoised_fn=lambda x: x * 0)
    assert out["pred_xstart"].abs().max().item() == 0.0


# ---------------------------------------------------------------------------------- variances
def test_learned_range_hits_both_ends(linear):
    x, t = torch.zeros(3, 1, 2, 2), torch.tensor([1, 300, 999])
    diffusion = GaussianDiffusion(linear.betas, var_type="learned_range")
    for v, name in ((1.0, "log_betas"), (-1.0, "posterior_log_variance_clipped")):
        _, log_var = diffusion.output_variance(torch.full_like(x, v), x, t)
        torch.testing.assert_close(log_var, diffusion.extract(name, t, 4).expand_as(x))
    _, log_var = diffusion.output_variance(torch.zeros_like(x), x, t)  # midpoint: geometric mean
    mid = 0.5 * (diffusion.extract("log_betas", t, 4) + diffusion.extract("posterior_log_variance_clipped", t, 4))
    torch.testing.assert_close(log_var, mid.expand_as(x))


def test_fixed_variances(linear):
    x, t = torch.zeros(2, 1, 1, 1), torch.tensor([0, 7])
    large = GaussianDiffusion(linear.betas, var_type="fixed_large").output_variance(None, x, t)[0].flatten()
    small = GaussianDiffusion(linear.betas, var_type="fixed_small").output_variance(None, x, t)[0].flatten()
    assert large.tolist() == pytest.approx([linear.posterior_variance[1], linear.betas[7]], rel=1e-6)
    assert small.tolist() == pytest.approx([0.0, linear.posterior_variance[7]], rel=1e-6)


# ---------------------------------------------------------------------------------- likelihood pieces
def test_kl_of_identical_gaussians_is_zero_and_matches_closed_form():
    gen = torch.Generator().manual_seed(0)
    m, lv = torch.randn(100, generator=gen), torch.randn(100, generator=gen)
    assert normal_kl(m, lv, m, lv).abs().max().item() < 1e-7
    kl = normal_kl(torch.tensor(0.0), 0.0, torch.tensor(1.0), math.log(4.0))  # N(0,1) || N(1,4)
    assert kl.item() == pytest.approx(math.log(2) + (1 + 1) / 8 - 0.5, rel=1e-6)


@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.5, -1.0), (-0.99, -5.0), (2.0, 0.5)])
def test_discretized_likelihood_sums_to_one_over_256_bins(mean, log_scale):
    x = bin_centres(torch.arange(256)).float()
    log_p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_discretized_likelihood_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        discretized_gaussian_log_likelihood(torch.zeros(3), torch.zeros(2), torch.zeros(3))


# ---------------------------------------------------------------------------------- losses on the oracle
def point_mass_oracle(diffusion, dims=(3, 4, 4)):
    mean = bin_centres(torch.randint(40, 215, (1,) + dims, generator=torch.Generator().manual_seed(3)))
    mixture = GaussianMixture(mean, std=0.0)
    return mixture, MixtureDenoiser(mixture, diffusion)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_oracle_training_losses_are_exact(linear, var_type):
    """Data = one point: the oracle's eps is the true noise, so L_simple = 0 and L_vlb is analytic."""
    diffusion = GaussianDiffusion(linear.betas, var_type=var_type)
    mixture, model = point_mass_oracle(diffusion)
    x0, _ = mixture.sample(6)
    t = torch.tensor([1, 2, 10, 250, 700, 999])
    assert diffusion.training_losses(model, x0, t)["mse"].max().item() < 1e-8

    vb = diffusion.vb_terms_bpd(model, x0, diffusion.q_sample(x0, t), t, clip_denoised=False)["output"]
    if var_type == "fixed_small":  # p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x_0) exactly
        expected = torch.zeros(6, dtype=torch.float64)
    else:  # same means, variance beta_t instead of beta~_t: KL = (log r + 1/r - 1) / 2 with r = beta / beta~
        r = diffusion.betas[t] / diffusion.posterior_variance[t]
        expected = torch.from_numpy(0.5 * (np.log(r) + 1 / r - 1) / math.log(2))
    torch.testing.assert_close(vb.double(), expected, rtol=1e-3, atol=1e-6)


def test_oracle_decoder_term_is_the_analytic_bin_probability(linear):
    diffusion = GaussianDiffusion(linear.betas, var_type="fixed_small")
    mixture, model = point_mass_oracle(diffusion)
    x0, _ = mixture.sample(4)
    t = torch.zeros(4, dtype=torch.long)
    vb = diffusion.vb_terms_bpd(model, x0, diffusion.q_sample(x0, t), t)["output"]
    # mean = x_0 exactly at t = 0 (mu~_0 = x_0); the bin of half-width 1/255 under N(0, beta~_1).
    std = math.sqrt(diffusion.posterior_variance[1])
    phi = lambda z: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))  # noqa: E731
    expected = -math.log2(phi(1 / 255 / std) - phi(-1 / 255 / std))
    torch.testing.assert_close(vb, torch.full((4,), expected), rtol=1e-4, atol=1e-4)


def test_hybrid_loss_stops_the_gradient_of_the_mean_in_the_vlb(linear):
    diffusion = GaussianDiffusion(linear.betas, var_type="learned_range")
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    t = torch.tensor([3, 600])
    out = torch.zeros(2, 2, 4, 4, requires_grad=True)
    terms = diffusion.training_losses(lambda x, t: out, x0, t)
    assert set(terms) == {"loss", "mse", "vb"}
    grad_vb, = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert grad_vb[:, :1].abs().max().item() == 0.0 and grad_vb[:, 1:].abs().max().item() > 0
    grad_mse, = torch.autograd.grad(terms["mse"].sum(), out)
    assert grad_mse[:, 1:].abs().max().item() == 0.0


@pytest.mark.parametrize("loss_type, factor", [("mse", 1.0), ("rescaled_mse", 4.0)])
def test_rescaled_mse_scales_the_vlb_term(loss_type, factor):
    diffusion = GaussianDiffusion.from_schedule("cosine", 4000, var_type="learned_range", loss_type=loss_type)
    x0, t, noise = torch.zeros(2, 1, 2, 2), torch.tensor([5, 3000]), torch.randn(2, 1, 2, 2)
    out = torch.randn(2, 2, 2, 2)
    plain = GaussianDiffusion(diffusion.betas, var_type="learned_range").training_losses(
        lambda x, t: out, x0, t, noise=noise)
    terms = diffusion.training_losses(lambda x, t: out, x0, t, noise=noise)
    torch.testing.assert_close(terms["vb"], plain["vb"] * factor)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])


def test_kl_losses(linear):
    x0, t = torch.zeros(2, 1, 2, 2), torch.tensor([0, 9])
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    noise = torch.ones_like(x0)
    kl = GaussianDiffusion(linear.betas, loss_type="kl").training_losses(model, x0, t, noise=noise)
    rkl = GaussianDiffusion(linear.betas, loss_type="rescaled_kl").training_losses(model, x0, t, noise=noise)
    assert set(kl) == {"loss"}
    torch.testing.assert_close(rkl["loss"], kl["loss"] * T)


def test_prior_bpd_is_the_closed_form_kl(linear):
    x0 = torch.tensor([[0.5, -1.0]])
    abar = linear.alphas_cumprod[-1]
    kl = 0.5 * (-1 - math.log(1 - abar) + (1 - abar) + abar * x0.double() ** 2).mean() / math.log(2)
    assert linear.prior_bpd(x0).item() == pytest.approx(kl.item(), rel=1e-4)


def test_calc_bpd_loop_on_oracle_data_is_close_to_the_entropy_bound():
    """Four equally likely points on the pixel grid in d = 2: NLL = H(pi) / d + decoder term.

    The bound is above the NLL by the discretisation of the reverse process; 1000 steps make the
    gap small. The decoder term (t = 0) is the same analytic bin probability as above.
    """
    diffusion = GaussianDiffusion.from_schedule("linear", T, var_type="fixed_small")
    means = bin_centres(torch.tensor([[40, 40], [40, 200], [200, 40], [200, 200]]))
    mixture = GaussianMixture(means, std=0.0)
    model = MixtureDenoiser(mixture, diffusion)
    x0, _ = mixture.sample(2000, generator=torch.Generator().manual_seed(0))
    out = diffusion.calc_bpd_loop(model, x0, generator=torch.Generator().manual_seed(1))
    assert out["vb"].shape == (2000, T) and torch.isfinite(out["total_bpd"]).all()
    std = math.sqrt(diffusion.posterior_variance[1])
    phi = lambda z: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))  # noqa: E731
    decoder = -math.log2(phi(1 / 255 / std) - phi(-1 / 255 / std))
    analytic = math.log2(4) / 2 + decoder + diffusion.prior_bpd(x0).mean().item()
    measured = out["total_bpd"].mean().item()
    assert out["vb"][:, 0].mean().item() == pytest.approx(decoder, rel=1e-3)
    assert analytic - 0.01 < measured < analytic + 0.02, (measured, analytic)  # measured gap: +0.007
    assert out["xstart_mse"][:, :20].mean().item() < 1e-6  # components are told apart at small t


# ---------------------------------------------------------------------------------- bad input
def test_timesteps_are_validated(linear):
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="timestep 1000 is out of range"):
        linear.q_sample(x, torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="timestep -1 is out of range"):
        linear.training_losses(lambda x, t: x, x, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer tensor"):
        linear.q_sample(x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="2 timesteps for a batch of 1"):
        linear.q_sample(x[:1], torch.tensor([0, 1]))


def test_output_channel_mismatch_is_explained(linear):
    learned = GaussianDiffusion(linear.betas, var_type="learned_range")
    with pytest.raises(ValueError, match="needs 2 output channels"):
        learned.p_mean_variance(lambda x, t: x, torch.zeros(1, 1, 2, 2), torch.tensor([1]))
    with pytest.raises(ValueError, match="learned_range"):
        linear.p_mean_variance(lambda x, t: torch.cat([x, x], 1), torch.zeros(1, 1, 2, 2), torch.tensor([1]))


def test_model_sees_original_timesteps_under_respacing(linear):
    seen = []
    respaced = linear.respace("ddim10")
    respaced.p_mean_variance(lambda x, t: seen.append(t.tolist()) or x, torch.zeros(2, 1, 1, 1), torch.tensor([0, 9]))
    assert seen == [[0, 900]]
    assert mean_flat(torch.ones(3, 2, 2)).tolist() == [1.0, 1.0, 1.0]
