"""Every sampler and every guidance kind against the Gaussian-mixture oracle (DESIGN §5).

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


@pytest.mark.parametrize("options", [SAMPLERS["ddpm-250"][0], SAMPLERS["ddim-50-eta0"][0],
                                     SAMPLERS["dpm-solver-20"][0]], ids=["ddpm", "ddim", "dpm-solver"])
def test_classifier_guidance_at_scale_1_reproduces_the_class_conditionals(options):
    diffusion = diffusion_for("cosine")
    model, classifier = MixtureDenoiser(MIXTURE, diffusion), MixtureClassifier(MIXTURE, diffusion)
    y = torch.arange(3).repeat(N // 3)
    x = draw(model, diffusion, n=len(y), y=y, guidance=ClassifierGuidance(classifier, 1.0), **options)
    assert (nearest_component(x) == y).double().mean() >= 0.99
    for j in range(3):
        xj = x[y == j].double()
        assert (xj.mean(0) - MEANS[j]).abs().max() < 4 * MIXTURE.std / math.sqrt(len(xj)) + 0.015


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


def test_conditional_model_with_classifier_and_guidance_chain():
    """ADM-G: a conditional model and a classifier together; a chain applies both in order."""
    diffusion = diffusion_for("cosine")
    conditional = MixtureDenoiser(MIXTURE, diffusion, class_conditional=True)
    classifier = MixtureClassifier(MIXTURE, diffusion)
    y = torch.arange(3).repeat(200)
    x = draw(conditional, diffusion, n=len(y), sampler="ddim", steps="ddim25", y=y,
             guidance=[ClassifierFreeGuidance(1.0, null_label=3), ClassifierGuidance(classifier, 1.0)])
    assert (nearest_component(x) == y).all()
    assert isinstance(GuidanceChain([]), GuidanceChain) and not GuidanceChain([]).active


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
