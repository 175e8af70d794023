"""Every sampler and every guidance kind against the Gaussian-mixture oracle (docs/testing.md).

The oracle's exact eps and p(y | x_t) stand in for trained networks, so what remains is the
sampler's own error. Tolerances: a component mean has standard error s / sqrt(N pi_k) (0.0025 for
the smallest component here), so means must be within 4 SE plus an allowance for the sampler's
discretisation bias, measured on this oracle: <= 0.005 with 250+ steps, <= 0.015 with 20-50.
"""
import math

import pytest
import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.mixture import GaussianMixture, MixtureClassifier, MixtureDenoiser
from guided_diffusion.sampling import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    GuidanceChain,
    ddim_invert,
    sample,
)

N = 8000
MEANS = torch.tensor([[0.6, 0.0], [-0.3, 0.52], [-0.3, -0.52]])  # 1.04 apart, std 0.1: well separated
MIXTURE = GaussianMixture(MEANS, std=0.1, weights=[0.5, 0.3, 0.2])


def diffusion_for(schedule):
    return GaussianDiffusion.from_schedule(schedule, 1000, var_type="fixed_small")


def nearest_component(x, means=MEANS):
    return torch.cdist(x.double(), means.double()).argmin(1)


def draw(model, diffusion, n=N, seed=0, **options):
    return sample(model, diffusion, (n, MEANS.shape[1]), generator=torch.Generator().manual_seed(seed),
                  progress=False, clip_denoised=False, **options)


SAMPLERS = {
    "ddpm-1000": (dict(sampler="ddpm", steps=None), 0.005),
    "ddpm-250": (dict(sampler="ddpm", steps="250"), 0.005),
    "ddim-50-eta0": (dict(sampler="ddim", steps="ddim50", eta=0.0), 0.015),
    "ddim-50-eta1": (dict(sampler="ddim", steps="ddim50", eta=1.0), 0.015),
    "dpm-solver-20": (dict(sampler="dpm-solver", steps=20), 0.015),
}


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_reproduces_the_mixture(name, schedule):
    options, bias = SAMPLERS[name]
    diffusion = diffusion_for(schedule)
    x = draw(MixtureDenoiser(MIXTURE, diffusion), diffusion, **options)
    k = nearest_component(x)
    freq = torch.bincount(k, minlength=3).double() / N
    se = (MIXTURE.weights * (1 - MIXTURE.weights) / N).sqrt()
    assert ((freq - MIXTURE.weights).abs() < 3 * se).all(), (freq, MIXTURE.weights)
    for j in range(3):
        xj = x[k == j].double()
        tolerance = 4 * MIXTURE.std / math.sqrt(len(xj)) + bias
        assert (xj.mean(0) - MEANS[j]).abs().max() < tolerance, (j, xj.mean(0), MEANS[j])


#: Two classes 3 std apart: p(y | x) is far from 0 and 1 over much of each class, so the guidance shapes the
#: class conditionals p(x | y) = N(+-0.15 e_1, 0.1^2 I) (known in closed form) instead of only picking a side.
OVERLAP = GaussianMixture(torch.tensor([[0.15, 0.0], [-0.15, 0.0]]), std=0.1)
#: Every sampler, at step counts where its own discretisation bias on this oracle is small (measured, N = 8000,
#: unguided class-conditional model: class means within 0.003 of +-0.15, stds 0.096..0.103).
GUIDED_SAMPLERS = {
    "ddpm": dict(sampler="ddpm", steps=None),
    "ddim": dict(sampler="ddim", steps="ddim250"),
    "dpm-solver": dict(sampler="dpm-solver", steps=50),
    "euler-maruyama": dict(sampler="euler-maruyama", steps="500"),
    "reverse-diffusion": dict(sampler="reverse-diffusion", steps="500"),
    "pc": dict(sampler="pc", steps="250", langevin_norms="batch"),
}


def check_class_conditionals(x, y, mixture, mean_allowance=0.005, std_allowance=0.006):
    """Each class's mean within 4 SE + ``mean_allowance`` of its component's, each axis's std within 4 SE +
    ``std_allowance`` of the component std (SE: s / sqrt(n) for the mean, s / sqrt(2 n) for the std)."""
    for label in range(len(mixture.means)):
        xj = x[y == label].double()
        n, s = len(xj), mixture.std
        mean_error = (xj.mean(0) - mixture.means[label].double()).abs().max().item()
        std_error = (xj.std(0) - s).abs().max().item()
        assert mean_error < 4 * s / math.sqrt(n) + mean_allowance, (label, xj.mean(0), mixture.means[label])
        assert std_error < 4 * s / math.sqrt(2 * n) + std_allowance, (label, xj.std(0), s)


@pytest.mark.parametrize("name", list(GUIDED_SAMPLERS))
def test_scale_1_guidance_samples_the_closed_form_class_conditionals(name):
    """Classifier guidance at scale 1 with the exact p(y | x_t) samples p(x | y) = N(mu_y, 0.1^2 I): class means and
    the within-class std (along the guided axis too), for every sampler. The same check rejects scale 1.3
    (means pushed ~0.02 outward, stds ~0.09 along the axis), so an over-scaled guidance cannot pass it."""
    diffusion = diffusion_for("cosine")
    model, classifier = MixtureDenoiser(OVERLAP, diffusion), MixtureClassifier(OVERLAP, diffusion)
    y = torch.arange(2).repeat(N // 2)

    def guided(scale):
        return draw(model, diffusion, n=len(y), y=y, guidance=ClassifierGuidance(classifier, scale),
                    **GUIDED_SAMPLERS[name])

    check_class_conditionals(guided(1.0), y, OVERLAP)
    with pytest.raises(AssertionError):
        check_class_conditionals(guided(1.3), y, OVERLAP)


@pytest.mark.parametrize("options", [SAMPLERS["ddpm-250"][0], SAMPLERS["ddim-50-eta0"][0],
                                     SAMPLERS["dpm-solver-20"][0]], ids=["ddpm", "ddim", "dpm-solver"])
def test_larger_scales_sharpen_the_class_conditionals(options):
    """Two overlapping classes (4 std apart): scale 4 pushes each class away from the other and
    shrinks its spread along the separating axis, compared with scale 1 (= p(x | y))."""
    mixture = GaussianMixture(torch.tensor([[0.2, 0.0], [-0.2, 0.0]]), std=0.1)
    diffusion = diffusion_for("cosine")
    model, classifier = MixtureDenoiser(mixture, diffusion), MixtureClassifier(mixture, diffusion)
    y = torch.arange(2).repeat(N // 2)
    spread, offset = {}, {}
    for scale in (1.0, 4.0):
        x = draw(model, diffusion, n=len(y), y=y, guidance=ClassifierGuidance(classifier, scale), **options)
        spread[scale] = max(x[y == c, 0].double().std().item() for c in range(2))
        offset[scale] = min(x[y == 0, 0].double().mean().item(), -x[y == 1, 0].double().mean().item())
    assert spread[4.0] < 0.9 * spread[1.0], spread
    assert offset[4.0] > offset[1.0] + 0.03, offset


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver"])
def test_scale_zero_is_exactly_unguided(sampler):
    diffusion = diffusion_for("linear")
    model, classifier = MixtureDenoiser(MIXTURE, diffusion), MixtureClassifier(MIXTURE, diffusion)
    y = torch.zeros(64, dtype=torch.long)
    plain = draw(model, diffusion, n=64, sampler=sampler, steps="20")
    guided = draw(model, diffusion, n=64, sampler=sampler, steps="20", y=y, guidance=ClassifierGuidance(classifier, 0))
    assert torch.equal(plain, guided)


@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver"])
def test_classifier_free_guidance_equals_exact_classifier_guidance_for_eps_samplers(sampler, scale):
    """With exact models, eps_null + w (eps_y - eps_null) = eps - sqrt(1 - abar) w grad log p(y | x_t)."""
    diffusion = diffusion_for("cosine")
    y = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(1))
    by_classifier = draw(MixtureDenoiser(MIXTURE, diffusion), diffusion, n=500, sampler=sampler, steps=20, y=y,
                         guidance=ClassifierGuidance(MixtureClassifier(MIXTURE, diffusion), scale))
    free = draw(MixtureDenoiser(MIXTURE, diffusion, class_conditional=True), diffusion, n=500, sampler=sampler,
                steps=20, y=y, guidance=ClassifierFreeGuidance(scale, null_label=3))
    torch.testing.assert_close(free, by_classifier, atol=1e-3, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver"])
def test_a_chain_of_classifier_free_and_classifier_guidance_adds_their_scales(sampler):
    """ADM-G with CFG: a conditional model guided by classifier-free w = 2 (the doubled batch runs) and then by a
    classifier at s = 1 is, with exact models, classifier guidance at s = w + 1 = 3 of the unconditional model:
    eps_null + w (eps_y - eps_null) - sqrt(1 - abar) s grad = eps - sqrt(1 - abar) (w + s) grad log p(y | x_t)."""
    diffusion = diffusion_for("cosine")
    conditional = MixtureDenoiser(OVERLAP, diffusion, class_conditional=True)
    classifier = MixtureClassifier(OVERLAP, diffusion)
    y = torch.arange(2).repeat(250)
    chained = draw(conditional, diffusion, n=len(y), sampler=sampler, steps=20, y=y,
                   guidance=[ClassifierFreeGuidance(2.0, null_label=2), ClassifierGuidance(classifier, 1.0)])
    summed = draw(MixtureDenoiser(OVERLAP, diffusion), diffusion, n=len(y), sampler=sampler, steps=20, y=y,
                  guidance=ClassifierGuidance(classifier, 3.0))
    torch.testing.assert_close(chained, summed, atol=1e-3, rtol=0)
    one_only = draw(conditional, diffusion, n=len(y), sampler=sampler, steps=20, y=y,
                    guidance=[ClassifierFreeGuidance(2.0, null_label=2)])
    assert (one_only - summed).abs().max() > 0.01  # the classifier's part is not lost in the chain
    assert not GuidanceChain([]).active


def test_ddim_eta_1_is_ancestral_sampling_with_the_posterior_variance():
    diffusion = diffusion_for("linear")
    model = MixtureDenoiser(MIXTURE, diffusion)
    ddim = draw(model, diffusion, n=256, sampler="ddim", steps="ddim25", eta=1.0)
    ddpm = draw(model, diffusion, n=256, sampler="ddpm", steps="ddim25")
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=0)


@pytest.mark.parametrize("steps, mean_error", [("ddim50", 0.03), ("ddim100", 0.02)])
def test_ddim_inversion_then_sampling_reconstructs_oracle_samples(steps, mean_error):
    diffusion = diffusion_for("cosine")
    model = MixtureDenoiser(MIXTURE, diffusion)
    x0, _ = MIXTURE.sample(1000, generator=torch.Generator().manual_seed(5))
    x_T = ddim_invert(model, diffusion, x0, steps=steps, progress=False)
    assert 0.8 < x_T.std().item() < 1.1  # a latent at the noise level DDIM starts from
    rebuilt = sample(model, diffusion, x_T, sampler="ddim", steps=steps, progress=False, clip_denoised=False)
    error = (rebuilt - x0).abs()
    # Points on the ridge between two components are where the probability-flow ODE is stiff.
    assert error.mean() < mean_error and error.quantile(0.9) < 2 * mean_error
