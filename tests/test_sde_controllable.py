"""Inpainting, colorization and latent interpolation against the mixture oracle's exact conditionals.

For an isotropic mixture, the unknown coordinates given known ones x_K = y follow again a mixture:
component k keeps its unknown-coordinate mean and std and gets the weight
pi_k N(y; mu_k,K, s^2 I) / sum_j pi_j N(y; mu_j,K, s^2 I).
"""
import math

import pytest
import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.mixture import GaussianMixture, MixtureDenoiser
from guided_diffusion.sampling import (
    COLOR_BASIS,
    colorization,
    from_decoupled,
    Inpainting,
    interpolate,
    sample,
    slerp,
    to_decoupled,
)
from guided_diffusion.sde import VESDE, VPSDE, euler_maruyama_sample, mixture_score_model, reverse_diffusion_sample

N = 6000
OBSERVED = -0.3  # the known first coordinate


def conditional_weights(mixture, known_dims, y):
    means = mixture.means.reshape(mixture.num_components, -1)[:, known_dims]
    log_w = torch.log(mixture.weights) - ((y - means) ** 2).sum(1) / (2 * mixture.std ** 2)
    return torch.softmax(log_w, 0)


def check_unknown_coordinate(x, mixture, mean_allowance, weight_allowance=0.0):
    """x[:, 1] against the exact conditional: components 1 (mean +0.52) and 2 (-0.52)."""
    assert (x[:, 0] - OBSERVED).abs().max() < 1e-5  # the known coordinate is the observation itself
    w = conditional_weights(mixture, [0], torch.tensor([OBSERVED], dtype=torch.float64))
    p_up = float(w[1] / (w[1] + w[2]))
    assert float(w[0]) < 1e-10
    u = x[:, 1].double()
    up = u > 0
    se = math.sqrt(p_up * (1 - p_up) / len(u))
    assert abs(up.double().mean().item() - p_up) < 3 * se + weight_allowance, (up.double().mean(), p_up)
    for part, mean in ((u[up], 0.52), (u[~up], -0.52)):
        assert abs(part.mean().item() - mean) < 4 * mixture.std / math.sqrt(len(part)) + mean_allowance, part.mean()
    return up.double().mean().item()


def far_mixture():
    """Component 0 is 33 std away in the known coordinate: excluded by the observation at every
    noise level that matters, so replacement is exact; the conditional weights are 0.6 / 0.4."""
    return GaussianMixture(torch.tensor([[3.0, 0.0], [-0.3, 0.52], [-0.3, -0.52]]), std=0.1, weights=[0.5, 0.3, 0.2])


def observation(n=N):
    return torch.tensor([[OBSERVED, 0.0]]).expand(n, 2), torch.tensor([[1.0, 0.0]])


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 20.0)], ids=["vp", "ve"])
def test_inpainting_with_sde_samplers_follows_the_exact_conditional(sde):
    mixture = far_mixture()
    y, mask = observation()
    guidance = Inpainting(y, mask, sde, generator=torch.Generator().manual_seed(5))
    x = reverse_diffusion_sample(mixture_score_model(mixture, sde), None, (N, 2), guidance=guidance, steps=400,
                                 generator=torch.Generator().manual_seed(0), progress=False)
    check_unknown_coordinate(x, mixture, mean_allowance=0.005)
    for part in (x[x[:, 1] > 0, 1], x[x[:, 1] < 0, 1]):
        assert abs(part.double().std().item() - 0.1) < 4 * 0.1 / math.sqrt(2 * len(part)) + 0.006


@pytest.mark.parametrize("sampler, steps", [("ddpm", "250"), ("ddim", "ddim50")])
def test_inpainting_works_with_the_ddpm_and_ddim_samplers(sampler, steps):
    """The same Guidance object, unchanged samplers; means within the samplers' own allowance (0.015)."""
    mixture = far_mixture()
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, var_type="fixed_small")
    y, mask = observation()
    x = sample(MixtureDenoiser(mixture, diffusion), diffusion, (N, 2), sampler=sampler, steps=steps,
               guidance=Inpainting(y, mask, diffusion, generator=torch.Generator().manual_seed(5)),
               generator=torch.Generator().manual_seed(0), progress=False, clip_denoised=False)
    check_unknown_coordinate(x, mixture, mean_allowance=0.015)


def test_replacement_is_approximate_when_the_observation_is_only_weakly_decisive():
    """Component 0 only 9 std away in the known coordinate: at the noise level where the unknown
    coordinate picks its side (sigma ~ 0.4), the *noisy* stand-in for y still gives component 0 some
    weight, which dilutes the 0.6 / 0.4 preference. Measured P(up) = 0.58 (exact 0.60) for the
    reverse-diffusion sampler (0.57..0.59 across samplers): the replacement method's known bias
    (Song et al. 2021 App. I.2 approximate grad log p_t(x | y)); tested within 0.035."""
    mixture = GaussianMixture(torch.tensor([[0.6, 0.0], [-0.3, 0.52], [-0.3, -0.52]]), std=0.1, weights=[0.5, 0.3, 0.2])
    sde = VPSDE()
    y, mask = observation()
    x = reverse_diffusion_sample(mixture_score_model(mixture, sde), None, (N, 2), steps=400, progress=False,
                                 guidance=Inpainting(y, mask, sde, generator=torch.Generator().manual_seed(5)),
                                 generator=torch.Generator().manual_seed(0))
    p_up = check_unknown_coordinate(x, mixture, mean_allowance=0.02, weight_allowance=0.035)
    assert p_up < 0.6


def test_colour_transform_round_trip():
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(COLOR_BASIS @ COLOR_BASIS.T, torch.eye(3, dtype=torch.float64))
    u = to_decoupled(x)
    torch.testing.assert_close(from_decoupled(u), x)
    torch.testing.assert_close(u[:, 0], math.sqrt(3) * x.mean(1))
    torch.testing.assert_close(u.pow(2).sum(1), x.pow(2).sum(1))  # orthogonal: noise stays isotropic


def test_colorization_on_an_rgb_oracle():
    """RGB points: reddish (0.2, -0.1, -0.1) and cyanish (-0.2, 0.1, 0.1), both grey 0 and 0.49
    apart, and a dark (-0.9, -0.9, -0.9) component 16 std away in the grey channel: the colours
    given grey 0 are reddish / cyanish at 0.6 / 0.4 (the dark one excluded before the two split,
    as in the far-mixture inpainting test); the grey of every output is the input grey."""
    means = torch.tensor([[0.2, -0.1, -0.1], [-0.2, 0.1, 0.1], [-0.9, -0.9, -0.9]])
    mixture = GaussianMixture(means, std=0.1, weights=[0.3, 0.2, 0.5])
    grey = torch.zeros(N, 1)
    w = conditional_weights(GaussianMixture(to_decoupled(means.double()), std=0.1, weights=mixture.weights), [0],
                            torch.zeros(1, dtype=torch.float64))
    sde = VPSDE()
    x = euler_maruyama_sample(mixture_score_model(mixture, sde), None, (N, 3), steps=400, progress=False,
                              guidance=colorization(grey, sde, generator=torch.Generator().manual_seed(5)),
                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(1, keepdim=True), grey, atol=1e-5, rtol=0)
    k = torch.cdist(x.double(), means.double()).argmin(1)
    freq = torch.bincount(k, minlength=3).double() / N
    se = (w * (1 - w) / N).sqrt()
    assert ((freq - w).abs() < 3 * se + 1e-3).all(), (freq, w)
    for j in (0, 1):
        assert (x[k == j].double().mean(0) - means[j]).abs().max() < 4 * 0.1 / math.sqrt((k == j).sum()) + 0.005


def test_interpolation_endpoints_reconstruct():
    mixture = GaussianMixture(torch.tensor([[0.6, 0.0], [-0.3, 0.52], [-0.3, -0.52]]), std=0.1)
    diffusion = GaussianDiffusion.from_schedule("cosine", 1000)
    model = MixtureDenoiser(mixture, diffusion)
    x_a, _ = mixture.sample(200, generator=torch.Generator().manual_seed(0), labels=torch.zeros(200, dtype=torch.long))
    x_b, _ = mixture.sample(200, generator=torch.Generator().manual_seed(1), labels=torch.ones(200, dtype=torch.long))
    rows = interpolate(model, diffusion, x_a, x_b, [0.0, 0.5, 1.0], encoder="ddim", steps="ddim100",
                       clip_denoised=False)
    assert rows.shape == (3, 200, 2)
    assert (rows[0] - x_a).abs().mean() < 0.02 and (rows[2] - x_b).abs().mean() < 0.02  # DDIM round trip
    assert torch.isfinite(rows[1]).all() and (rows[1] - rows[0]).abs().mean() > 0.1
    z0, z1 = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3)).unbind()
    z1 = z1 * z0.norm(dim=1, keepdim=True) / z1.norm(dim=1, keepdim=True)
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0) and torch.testing.assert_close(slerp(z0, z1, 1.0), z1)
    torch.testing.assert_close(slerp(z0, z1, 0.3).norm(dim=1), z0.norm(dim=1))  # keeps the norm of noise latents
    assert ((0.5 * (z0 + z1)).norm(dim=1) < z0.norm(dim=1)).all()  # where linear interpolation shrinks it
    noisy = interpolate(model, diffusion, x_a, x_b, [0.0, 0.5, 1.0], t=100, steps="50", clip_denoised=False,
                        generator=torch.Generator().manual_seed(2))
    near = lambda x: torch.cdist(x.double(), mixture.means).argmin(1)  # noqa: E731
    assert (near(noisy[0]) == 0).double().mean() > 0.95 and (near(noisy[2]) == 1).double().mean() > 0.95
    assert (torch.cdist(noisy[1].double(), mixture.means).min(1).values < 0.4).double().mean() > 0.95  # on the data
    again = interpolate(model, diffusion, x_a, x_b, [0.0, 0.5, 1.0], t=100, steps="50", clip_denoised=False,
                        generator=torch.Generator().manual_seed(2))
    assert torch.equal(noisy, again)  # fixed decoding noise: rows differ only through lambda


def test_bad_controllable_input():
    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    y, mask = observation(2)
    with pytest.raises(ValueError, match="original .not respaced. diffusion"):
        Inpainting(y, mask, diffusion.respace("10"))
    with pytest.raises(ValueError, match="only 0 .unknown. and 1 .known."):
        Inpainting(y, mask * 0.5, diffusion)
    with pytest.raises(ValueError, match="orthonormal"):
        Inpainting(y, mask, diffusion, basis=torch.ones(2, 2))
    with pytest.raises(ValueError, match="unknown encoder 'vae'"):
        interpolate(None, diffusion, y, y, [0.5], encoder="vae")
