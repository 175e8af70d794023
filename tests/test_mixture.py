"""The Gaussian-mixture oracle's closed forms."""
import math

import pytest
import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.mixture import GaussianMixture, MixtureClassifier, MixtureDenoiser


@pytest.fixture
def mixture():
    means = torch.tensor([[1.0, 0.0, 0.5], [-1.0, 0.5, 0.0], [0.0, -1.0, -0.5]])
    return GaussianMixture(means, std=0.3, weights=[0.5, 0.3, 0.2])


def test_samples_have_the_mixture_weights_and_moments(mixture):
    x, y = mixture.sample(30000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(y, minlength=3).double() / len(y)
    se = (mixture.weights * (1 - mixture.weights) / len(y)).sqrt()
    assert ((freq - mixture.weights).abs() < 4 * se).all()
    for k in range(3):
        xk = x[y == k].double()
        assert torch.allclose(xk.mean(0), mixture.means[k], atol=4 * 0.3 / math.sqrt(len(xk)))
        assert xk.std(0).tolist() == pytest.approx([0.3] * 3, rel=0.05)


def test_score_is_the_gradient_of_the_noisy_log_density(mixture):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    a, sigma = torch.tensor([0.9, 0.5, 0.1, 1.0, 0.99]), torch.tensor([0.4, 0.8, 0.99, 0.2, 0.1])
    grad, = torch.autograd.grad(mixture.log_prob(x, a, sigma).sum(), x)
    torch.testing.assert_close(mixture.score(x.detach(), a, sigma), grad)
    y = torch.tensor([0, 1, 2, 0, 1])
    grad_y, = torch.autograd.grad(mixture.component_log_prob(x, a, sigma)[torch.arange(5), y].sum(), x)
    torch.testing.assert_close(mixture.score(x.detach(), a, sigma, y), grad_y)


def test_class_posterior_is_bayes_rule(mixture):
    x = torch.randn(4, 3)
    a, sigma = 0.8, 0.6
    var = a ** 2 * 0.09 + sigma ** 2
    lik = torch.stack([torch.distributions.Normal(a * mixture.means[k], math.sqrt(var)).log_prob(x.double()).sum(1)
                       for k in range(3)], dim=1)
    expected = torch.log_softmax(lik + mixture.weights.log(), dim=1)
    torch.testing.assert_close(mixture.class_logits(x, a, sigma), expected)


def test_eps_is_the_posterior_mean_of_the_noise():
    """One component: E[eps | x_t] is linear in x_t; check it by regression on simulated pairs."""
    single = GaussianMixture(torch.tensor([[0.5, -0.5]]), std=0.7)
    gen = torch.Generator().manual_seed(1)
    x0, _ = single.sample(200000, generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    a, sigma = 0.6, 0.8
    xt = a * x0 + sigma * eps
    pred = single.eps(xt, a, sigma).float()
    residual = eps - pred
    # The optimal predictor leaves a residual uncorrelated with x_t and with zero mean.
    assert residual.mean(0).abs().max() < 0.01
    assert (residual * (xt - xt.mean(0))).mean(0).abs().max() < 0.01
    var = a ** 2 * 0.49 + sigma ** 2
    assert residual.var(0).tolist() == pytest.approx([1 - sigma ** 2 / var] * 2, rel=0.02)


def test_network_wrappers_use_the_diffusion_schedule(mixture):
    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    denoiser, classifier = MixtureDenoiser(mixture, diffusion), MixtureClassifier(mixture, diffusion)
    x, t = torch.randn(2, 3), torch.tensor([0, 99])
    abar = torch.as_tensor(diffusion.alphas_cumprod[[0, 99]])
    torch.testing.assert_close(denoiser(x, t), mixture.eps(x, abar.sqrt(), (1 - abar).sqrt()).float())
    torch.testing.assert_close(classifier(x, t), mixture.class_logits(x, abar.sqrt(), (1 - abar).sqrt()).float())
    conditional = MixtureDenoiser(mixture, diffusion, class_conditional=True)
    assert conditional.num_classes == 3 and denoiser.num_classes is None
    torch.testing.assert_close(conditional(x, t, y=torch.tensor([1, 3])),
                               torch.stack([mixture.eps(x, abar.sqrt(), (1 - abar).sqrt(), torch.tensor([1, 1]))[0],
                                            mixture.eps(x, abar.sqrt(), (1 - abar).sqrt())[1]]).float())
    with pytest.raises(ValueError, match="unconditional"):
        denoiser(x, t, y=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="not respaced"):
        MixtureDenoiser(mixture, diffusion.respace("10"))


def test_image_shaped_events_and_bad_input():
    mixture = GaussianMixture(torch.zeros(2, 1, 4, 4), std=0.5)
    x, y = mixture.sample(3)
    assert x.shape == (3, 1, 4, 4) and mixture.dim == 16
    assert mixture.score(x, 1.0, 0.1).shape == x.shape
    with pytest.raises(ValueError, match="event shape"):
        mixture.log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="non-negative"):
        GaussianMixture(torch.zeros(2, 3), std=0.1, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="degenerate"):
        GaussianMixture(torch.zeros(1, 3), std=0.0).log_prob(torch.zeros(1, 3))
