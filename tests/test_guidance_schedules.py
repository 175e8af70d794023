"""Where, how much and how cheaply to guide (interval, scale schedules, temperature, x0 gradient, gradient
reuse, classifier-free interval) against the Gaussian-mixture oracle: exact eps and p(y | x_t), classifier
calls counted, not timed."""
from __future__ import annotations

import math

import pytest
import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.guidance import GuidanceInterval, NoiseLevel, schedule_factor
from guided_diffusion.mixture import GaussianMixture, MixtureClassifier, MixtureDenoiser
from guided_diffusion.sampling import ClassifierFreeGuidance, ClassifierGuidance, GuidanceChain, sample

MEANS = torch.tensor([[0.6, 0.0], [-0.3, 0.52], [-0.3, -0.52]])
MIXTURE = GaussianMixture(MEANS, std=0.1, weights=[0.5, 0.3, 0.2])
DIFFUSION = GaussianDiffusion.from_schedule("cosine", 1000, var_type="fixed_small")
MODEL = MixtureDenoiser(MIXTURE, DIFFUSION)
N = 64
Y = torch.full((N,), 2)
SAMPLER_OPTIONS = {
    "ddpm": dict(steps="40"),
    "ddim": dict(steps="ddim20"),
    "dpm-solver": dict(steps=10),
    "euler-maruyama": dict(steps=30),
    "pc": dict(steps=20),
}


class Counted(torch.nn.Module):
    """The exact classifier, counting calls and remembering what it saw."""

    def __init__(self):
        super().__init__()
        self.classifier = MixtureClassifier(MIXTURE, DIFFUSION)
        self.calls, self.seen = 0, []

    def forward(self, x, t):
        self.calls += 1
        self.seen.append((x.detach().clone(), t.detach().clone()))
        return self.classifier(x, t)


def draw(sampler, guidance, model=MODEL, y=Y, seed=0):
    return sample(model, DIFFUSION, (len(y), 2), sampler=sampler, y=y, guidance=guidance, progress=False,
                  clip_denoised=False, generator=torch.Generator().manual_seed(seed), **SAMPLER_OPTIONS[sampler])


def guided(counted=None, scale=2.0, **options):
    return ClassifierGuidance(counted or Counted(), scale, **options)


def respaced_timesteps(steps: str) -> list[int]:
    return DIFFUSION.respace(steps).timestep_map.tolist()


@pytest.mark.parametrize("sampler", list(SAMPLER_OPTIONS))
def test_an_interval_over_every_step_is_plain_guidance_and_an_empty_one_is_unguided(sampler):
    plain = draw(sampler, guided())
    for interval, interval_in in (((0, 999), "t"), ((0.0, math.inf), "sigma")):
        assert torch.equal(draw(sampler, guided(interval=interval, interval_in=interval_in)), plain)
    counted = Counted()
    empty = draw(sampler, guided(counted, interval=(2000, 3000)))
    assert counted.calls == 0 and torch.equal(empty, draw(sampler, None))
    assert torch.equal(draw(sampler, guided(every=1)), plain)  # reuse with k = 1 is plain guidance
    assert torch.equal(draw(sampler, guided(temperature=1.0, schedule=lambda tau: 1.0)), plain)
    assert not torch.equal(draw(sampler, guided(interval=(0, 500))), plain)


@pytest.mark.parametrize("sampler, steps", [("ddpm", "40"), ("ddim", "ddim20")])
def test_the_classifier_is_called_only_inside_the_window(sampler, steps):
    counted = Counted()
    draw(sampler, guided(counted, interval=(300, 700)))
    inside = [t for t in respaced_timesteps(steps) if 300 <= t <= 700]
    assert counted.calls == len(inside) > 0
    assert sorted({int(t[0]) for _, t in counted.seen}) == sorted(inside)
    # sigma = sqrt((1 - abar) / abar): the same window given in sigma calls it at the same steps
    abar = DIFFUSION.alphas_cumprod
    lo, hi = math.sqrt((1 - abar[300]) / abar[300]), math.sqrt((1 - abar[700]) / abar[700])
    by_sigma = Counted()
    draw(sampler, guided(by_sigma, interval=(lo * (1 - 1e-9), hi * (1 + 1e-9)), interval_in="sigma"))
    assert by_sigma.calls == len(inside)


def test_the_sde_samplers_call_the_classifier_inside_the_window_only():
    counted, everywhere = Counted(), Counted()
    draw("euler-maruyama", guided(everywhere))
    draw("euler-maruyama", guided(counted, interval=(300, 700)))
    times = [int(t[0]) for _, t in everywhere.seen]
    assert counted.calls == sum(300 <= t <= 700 for t in times) and 0 < counted.calls < everywhere.calls


@pytest.mark.parametrize("every", [2, 3])
def test_gradient_reuse_evaluates_every_kth_step_and_reuses_the_gradient(every):
    counted = Counted()
    reused = draw("ddim", guided(counted, every=every))
    assert counted.calls == math.ceil(20 / every)
    plain = draw("ddim", guided())
    assert not torch.equal(reused, plain)
    # the reused gradient still guides: most samples land in class 2 (weight 0.2 unguided)
    nearest = torch.cdist(reused, MEANS).argmin(1)
    assert (nearest == 2).float().mean() > 0.9
    # a second run of the same object starts afresh (its first step evaluates)
    guidance = guided(Counted(), every=every)
    assert torch.equal(draw("ddim", guidance), draw("ddim", guidance))


def test_reuse_keeps_the_gradient_of_the_last_evaluation_times_the_step_s_scale():
    counted = Counted()
    guidance = guided(counted, every=2, schedule="linear").start()
    x = torch.randn(4, 2)
    t = torch.full((4,), 500)
    y = torch.full((4,), 1)
    first = guidance.grad_log_prob(x, t, y, scale=1.0)
    second = guidance.grad_log_prob(x + 1.0, t, y, scale=3.0)  # reused: not evaluated at the new x
    assert counted.calls == 1 and torch.equal(second, 3.0 * first)
    guidance.grad_log_prob(x, t, y)
    assert counted.calls == 2


def test_schedules_and_their_factors():
    assert schedule_factor("constant", 0.3) == 1.0
    assert schedule_factor("linear", 1.0) == 0.0 and schedule_factor("linear", 0.0) == 2.0
    assert schedule_factor("cosine", 1.0) == pytest.approx(0.0) and schedule_factor("cosine", 0.0) == 2.0
    taus = torch.linspace(0, 1, 10001)
    for name in ("linear", "cosine"):  # both average 1: the mean scale is the nominal one
        assert sum(schedule_factor(name, float(tau)) for tau in taus) / len(taus) == pytest.approx(1.0, abs=1e-3)
    guidance = guided(schedule="linear", interval=(100, 900))
    level = NoiseLevel(t=249.75, sigma=0.5, tau=0.25)
    assert guidance.scale_at(level) == pytest.approx(2.0 * 2 * 0.75)
    assert guidance.scale_at(NoiseLevel(t=950, sigma=5.0, tau=0.95)) == 0.0
    counted = Counted()
    assert torch.equal(draw("ddim", guided(counted, schedule=lambda tau: 0.0)), draw("ddim", None))
    assert counted.calls == 0
    linear = draw("ddim", guided(schedule="linear"))
    assert not torch.equal(linear, draw("ddim", guided()))


def test_a_schedule_scales_the_guidance_step_by_step():
    """At each step the linear schedule's shift equals plain guidance at scale s w(tau) (same x_t, same step)."""
    process = DIFFUSION.respace("ddim20")
    x, y = torch.randn(8, 2, generator=torch.Generator().manual_seed(3)), torch.full((8,), 1)
    from guided_diffusion.sampling.common import GuidedPredictor

    scheduled = GuidedPredictor(MODEL, process, y=y, guidance=guided(schedule="linear"), clip_denoised=False)
    for index in (2, 10, 17):
        tau = int(process.timestep_map[index]) / 999
        plain = GuidedPredictor(MODEL, process, y=y, guidance=guided(scale=2.0 * 2 * (1 - tau)), clip_denoised=False)
        torch.testing.assert_close(scheduled.predict(x, index, "eps")["eps"], plain.predict(x, index, "eps")["eps"],
                                   rtol=1e-6, atol=1e-7)


def test_temperature_divides_the_logits_not_the_log_probability():
    """grad log softmax(l / T)_y = (1 / T) (grad l_y - sum_j softmax(l / T)_j grad l_j): from the per-class logit
    gradients, independently of the guidance code. (It equals scale s / T only for the first term; the
    normaliser's gradient is weighted by the tempered probabilities.)"""
    classifier = MixtureClassifier(MIXTURE, DIFFUSION)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1)) * 0.3
    t = torch.full((16,), 400)
    y = torch.full((16,), 2)
    jacobian = torch.stack([torch.autograd.grad(classifier(x.requires_grad_(True), t)[:, j].sum(), x)[0]
                            for j in range(3)], dim=1)  # (B, K, D)
    x = x.detach()
    for temperature in (0.5, 2.0):
        weights = torch.softmax(classifier(x, t).float() / temperature, dim=-1)
        expected = (jacobian[torch.arange(16), y] - (weights[..., None] * jacobian).sum(1)) / temperature
        got = ClassifierGuidance(classifier, 1.0, temperature=temperature).grad_log_prob(x, t, y)
        torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-5)
        plain_over_t = ClassifierGuidance(classifier, 1.0 / temperature).grad_log_prob(x, t, y)
        assert not torch.allclose(got, plain_over_t, rtol=1e-3, atol=1e-4)
    assert torch.equal(ClassifierGuidance(classifier, 2.0, temperature=1.0).grad_log_prob(x, t, y),
                       ClassifierGuidance(classifier, 2.0).grad_log_prob(x, t, y))


def test_the_x0_gradient_asks_the_classifier_about_the_predicted_x0_at_t_zero():
    counted = Counted()
    process = DIFFUSION.respace("ddim20")
    from guided_diffusion.sampling.common import GuidedPredictor

    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    y = torch.full((8,), 2)
    predictor = GuidedPredictor(MODEL, process, y=y, guidance=guided(counted, gradient_at="x0"), clip_denoised=False)
    unguided = GuidedPredictor(MODEL, process, y=y, clip_denoised=False).predict(x, 12, "eps")
    predictor.predict(x, 12, "eps")
    seen_x, seen_t = counted.seen[0]
    assert torch.equal(seen_t, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(seen_x, unguided["pred_xstart"])
    samples = draw("ddim", guided(scale=1.0, gradient_at="x0"))
    assert (torch.cdist(samples, MEANS).argmin(1) == 2).float().mean() > 0.9  # it guides towards y = 2
    draw("euler-maruyama", guided(gradient_at="x0"))  # the SDE path hands over Tweedie's x0


def test_classifier_free_guidance_with_an_interval():
    model = MixtureDenoiser(MIXTURE, DIFFUSION, class_conditional=True)
    cfg = ClassifierFreeGuidance(3.0, null_label=3)
    plain = draw("ddim", cfg, model=model)
    assert torch.equal(draw("ddim", ClassifierFreeGuidance(3.0, 3, interval=(0, 999)), model=model), plain)
    conditional = draw("ddim", ClassifierFreeGuidance(1.0, 3), model=model)
    assert torch.equal(draw("ddim", ClassifierFreeGuidance(3.0, 3, interval=(2000, 3000)), model=model), conditional)
    batches = []
    model.register_forward_hook(lambda module, args, out: batches.append(len(args[0])))
    draw("ddim", ClassifierFreeGuidance(3.0, 3, interval=(300, 700)), model=model)
    inside = sum(300 <= t <= 700 for t in respaced_timesteps("ddim20"))
    assert batches.count(2 * N) == inside and batches.count(N) == 20 - inside
    both = draw("ddim", GuidanceChain([ClassifierFreeGuidance(3.0, 3, interval=(300, 700)),
                                       guided(interval=(0, 400))]), model=model)
    assert torch.isfinite(both).all()


@pytest.mark.parametrize("options, message", [
    (dict(schedule="exp"), "guidance schedule must be one of constant, linear, cosine"),
    (dict(interval=(5, 1)), r"\[5.0, 1.0\] has lo > hi"),
    (dict(interval=(-1, 1)), "finite and >= 0"),
    (dict(interval=(0, 1), interval_in="snr"), "in 't' or 'sigma'"),
    (dict(temperature=0), "temperature must be finite and > 0"),
    (dict(gradient_at="eps"), "gradient_at must be 'x_t' or 'x0'"),
    (dict(every=0), "every must be a positive integer"),
])
def test_bad_options_are_one_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        ClassifierGuidance(Counted(), 1.0, **options)
    assert GuidanceInterval(0, math.inf, "sigma").contains(NoiseLevel(t=999, sigma=1e4, tau=1.0))
