"""NCSN pieces: noise-level selection, the denoising score-matching loss and the UNet score network."""
import math

import pytest
import torch

from guided_diffusion.mixture import GaussianMixture
from guided_diffusion.nets.unet import UNetConfig
from guided_diffusion.sde import (
    VESDE,
    NoiseConditionalScoreNetwork,
    annealed_langevin_sample,
    gamma_for_dimension,
    geometric_sigmas,
    max_pairwise_distance,
    mixture_score_model,
    ncsn_loss,
    ncsn_sigmas,
    pc_sample,
    sigma_overlap,
)

TINY_UNET = UNetConfig(image_size=8, in_channels=3, model_channels=32, num_res_blocks=1, attention_resolutions=(4,),
                       channel_mult=(1, 2))


def test_gamma_rule_of_technique_2():
    """Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 0.5, Phi the normal CDF.
    For CIFAR-10 the paper's 232 levels from 50 to 0.01 (gamma 1.0376) sit just on the safe side."""
    for dim in (5, 784, 3072, 12288):
        gamma = gamma_for_dimension(dim)
        assert gamma > 1 and sigma_overlap(gamma, dim) == pytest.approx(0.5, abs=1e-9)
        root = math.sqrt(2 * dim)
        phi = torch.distributions.Normal(0.0, 1.0).cdf
        direct = phi(torch.tensor(root * (gamma - 1) + 3 * gamma)) - phi(torch.tensor(root * (gamma - 1) - 3 * gamma))
        assert float(direct) == pytest.approx(0.5, abs=1e-5)
    assert gamma_for_dimension(3072) == pytest.approx(1.0398, abs=1e-4)
    paper = (50 / 0.01) ** (1 / 231)
    assert paper < gamma_for_dimension(3072) and 0.5 < sigma_overlap(paper, 3072) < 0.6
    assert gamma_for_dimension(3072, overlap=0.9) < gamma_for_dimension(3072)  # more overlap, smaller steps
    with pytest.raises(ValueError, match="D >= 5"):
        gamma_for_dimension(2)


def test_noise_levels_from_data():
    """sigma_1 = the maximum pairwise distance (Technique 1), geometric down to sigma_L with ratio <= gamma."""
    data = torch.randn(300, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = ncsn_sigmas(data, sigma_min=0.01)
    brute = torch.pdist(data.reshape(300, -1).double()).max()
    assert sigmas[0] >= brute - 1e-9 and max_pairwise_distance(data, chunk_size=7) == pytest.approx(float(brute))
    ratios = sigmas[:-1] / sigmas[1:]
    torch.testing.assert_close(ratios, ratios[:1].expand_as(ratios))
    gamma = gamma_for_dimension(48)
    assert ratios[0] <= gamma and (sigmas[0] / 0.01) ** (1 / (len(sigmas) - 2)) > gamma  # the fewest levels
    assert sigmas[-1] == pytest.approx(0.01)
    assert len(ncsn_sigmas(sigma_max=50.0, dim=3072)) == 220
    with pytest.raises(ValueError, match="sigma_min=1.0 >= sigma_max=0.5"):
        geometric_sigmas(0.5, 1.0, 10)
    with pytest.raises(ValueError, match="num_scales must be an integer >= 2"):
        geometric_sigmas(1.0, 0.1, 1)


def test_dsm_loss_of_the_exact_score():
    """For data N(0, s^2 I) the exact score of the sigma-perturbed data is -x / (s^2 + sigma^2) and
    1/2 E|sigma s* + z|^2 = D s^2 / (2 (s^2 + sigma^2)): the minimum of the loss, reached within
    4 standard errors; a wrong score does worse."""
    s, dim, n = 0.5, 4, 20000
    x0 = s * torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = torch.tensor([2.0, 0.5, 0.1], dtype=torch.float64)

    def exact(x, sigma):
        return -x / (s ** 2 + sigma[:, None] ** 2)

    out = ncsn_loss(exact, x0, sigmas, torch.Generator().manual_seed(1))
    for i, sigma in enumerate(sigmas.tolist()):
        level = out["loss"][out["sigma_index"] == i]
        expected = dim * s ** 2 / (2 * (s ** 2 + sigma ** 2))
        assert level.mean() == pytest.approx(expected, abs=4 * float(level.std()) / level.numel() ** 0.5)
    worse = ncsn_loss(lambda x, sigma: 1.2 * exact(x, sigma), x0, sigmas, torch.Generator().manual_seed(1))
    assert worse["loss"].mean() > out["loss"].mean()
    fixed = ncsn_loss(exact, x0[:4], sigmas, [torch.Generator().manual_seed(k) for k in range(4)],
                      labels=torch.tensor([0, 1, 2, 0]))
    assert fixed["sigma"].tolist() == [2.0, 0.5, 0.1, 2.0]


def test_noise_conditional_unet():
    """score = -UNet(x / sqrt(1 + sigma^2), c_noise(sigma)) / sigma with c_noise the VE model time."""
    torch.manual_seed(0)
    net = NoiseConditionalScoreNetwork(TINY_UNET, sigma_min=0.01, sigma_max=10.0)
    torch.nn.init.normal_(net.unet.out[-1].weight, std=0.01)  # the output conv starts at zero
    x = torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([0.01, 10.0])
    torch.testing.assert_close(net.c_noise(sigma), torch.tensor([0.0, 999.0], dtype=torch.float64), atol=1e-4, rtol=0)
    scale = sigma[:, None, None, None]
    expected = -net.unet(x / (1 + scale ** 2).sqrt(), torch.tensor([0.0, 999.0])) / scale
    torch.testing.assert_close(net.score_sigma(x, sigma), expected, atol=1e-5, rtol=1e-4)
    model = net.score_model()
    t = net.sde.t_from_sigma(sigma)
    torch.testing.assert_close(model.score(x, t), net.score_sigma(x, sigma), atol=1e-5, rtol=1e-4)
    loss = ncsn_loss(net.score_sigma, torch.randn(4, 3, 8, 8), geometric_sigmas(10.0, 0.01, 8),
                     torch.Generator().manual_seed(0))["loss"]
    loss.mean().backward()
    assert net.unet.out[-1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        y = pc_sample(model, None, (2, 3, 8, 8), steps=3, generator=torch.Generator().manual_seed(0), progress=False)
        z = annealed_langevin_sample(model, None, (2, 3, 8, 8), steps=3, steps_per_level=2, progress=False)
    assert y.shape == z.shape == (2, 3, 8, 8) and torch.isfinite(y).all() and torch.isfinite(z).all()


def test_annealed_langevin_with_ncsn_sigmas_on_the_oracle():
    """Algorithm 1 with explicit geometric sigmas on the VE SDE of the levels: lands on the components."""
    mixture = GaussianMixture(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), std=0.1)
    sde = VESDE(0.01, 3.0)
    x = annealed_langevin_sample(mixture_score_model(mixture, sde), None, (2000, 2),
                                 sigmas=geometric_sigmas(3.0, 0.01, 20), steps_per_level=30, step_size=2e-5,
                                 generator=torch.Generator().manual_seed(0), progress=False)
    k = torch.cdist(x.double(), mixture.means).argmin(1)
    assert abs(k.double().mean().item() - 0.5) < 0.05
    assert ((x - mixture.means[k].float()).norm(dim=1) < 0.5).all()
