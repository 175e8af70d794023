"""Training-free guidance (TFG: DPS, FreeDoM, MPGD, UGD by its settings) against closed forms.

The linear-Gaussian problem: data x_0 ~ N(0, S^2 I) in D = 3 dimensions, whose exact eps denoiser is linear,
eps*(x_t) = sqrt(1 - abar_t) / v_t x_t with v_t = abar_t S^2 + 1 - abar_t, so x0_hat = c_t x_t with
c_t = sqrt(abar_t) S^2 / v_t; the objective is a linear observation, log f(x_0) = -|y_obs - A x_0|^2 / (2 sigma_y^2).
Everything DPS does on it is then affine in x_T and can be integrated in float64 independently of the code.
"""
import copy
import math

import pytest
import torch
from torch import nn

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.guidance import OBJECTIVES, PRESETS, ClassLogProb, TrainingFreeGuidance, make_objective, preset
from guided_diffusion.guidance.training_free import SDE_REFUSAL
from guided_diffusion.mixture import GaussianMixture, MixtureClassifier, MixtureDenoiser
from guided_diffusion.sampling import SAMPLERS, GuidedPredictor, ddim_step, sample, time_grid
from guided_diffusion.sampling.dpm_solver import X0_SHIFT_REFUSAL

S, SIGMA_Y = 0.5, 1.0
A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
Y_OBS = torch.tensor([0.4, -0.3], dtype=torch.float64)
D = 3
DIFFUSION = GaussianDiffusion.from_schedule("linear", 1000, var_type="fixed_small")


class LinearGaussianDenoiser(nn.Module):
    """The exact eps*(x_t, t) of x_0 ~ N(0, S^2 I): sqrt(1 - abar_t) / (abar_t S^2 + 1 - abar_t) x_t."""

    def __init__(self, diffusion):
        super().__init__()
        self.register_buffer("abar", torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64))

    def forward(self, x, t):
        abar = self.abar[t.long()].reshape(-1, 1)
        return ((1 - abar).sqrt() / (abar * S ** 2 + 1 - abar) * x.double()).to(x.dtype)


def observation_log_likelihood(x0, y=None):
    """log f(x_0) = -|y_obs - A x_0|^2 / (2 sigma_y^2), per sample."""
    residual = Y_OBS.to(x0.dtype) - x0 @ A.T.to(x0.dtype)
    return -(residual ** 2).sum(1) / (2 * SIGMA_Y ** 2)


def c_of(abar):
    return math.sqrt(abar) * S ** 2 / (abar * S ** 2 + 1 - abar)


def strength_table(process, strength, schedule):
    """rho_t over the grid, written out here: s_t = alpha_t / 1 - alpha_t / 1, scaled to mean ``strength``."""
    abar = torch.as_tensor(process.alphas_cumprod, dtype=torch.float64)
    alpha = abar / torch.as_tensor(process.alphas_cumprod_prev, dtype=torch.float64)
    s = {"increase": alpha, "decrease": 1 - alpha, "constant": torch.ones_like(alpha)}[schedule]
    return strength * s / s.mean()


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def one_line(error):
    return "\n" not in str(error.value)


def draw(model, diffusion, x_T, **options):
    options.setdefault("clip_denoised", False)
    return sample(model, diffusion, x_T, progress=False, **options)


# ------------------------------------------------------------------------------------------------ the identity
def smooth_objective(x0, y=None):
    """A non-quadratic objective (so Delta_0's iterations are not linear)."""
    return -0.5 * ((x0 - 0.3) ** 2).sum(1) + torch.sin(2 * x0).sum(1)


@pytest.mark.parametrize("steps", [None, "50"])
def test_the_x0_shift_is_tfgs_addition_to_x_prev(steps):
    """Sampling through the x_0 moved by d = Delta_t / sqrt(abar_t) + Delta_0 (eps fixed) is TFG's
    x_{t-1} = Sample(x_t, x0_hat, eps_hat) + Delta_t / sqrt(alpha_t) + sqrt(abar_{t-1}) Delta_0, alpha_t =
    abar_t / abar_{t-1} of the grid, for DDIM (eta 0 and 1) and the ancestral step, on random inputs."""
    process = DIFFUSION.respace(steps)
    guidance = TrainingFreeGuidance(smooth_objective, rho=0.7, mu=0.4, iterations=2, rho_schedule="decrease")
    rng = torch.Generator().manual_seed(0)
    weight = torch.randn(D, D, generator=rng)
    for index in (0, 1, process.num_timesteps // 2, process.num_timesteps - 1):
        x = torch.randn(8, D, generator=rng).requires_grad_(True)
        raw = torch.tanh(x @ weight)  # stands in for the model's x_0 with its graph to x_t
        t = torch.full((8,), index, dtype=torch.long)
        pred_xstart = raw.detach().clamp(-0.5, 0.5)
        eps = torch.randn(8, D, generator=rng)
        mean, variance, log_variance = process.q_posterior_mean_variance(pred_xstart, x.detach(), t)
        out = {"pred_xstart": pred_xstart, "eps": eps, "mean": mean, "variance": variance.expand(8, D),
               "log_variance": log_variance.expand(8, D), "raw_pred_xstart": raw}
        delta_t, delta_0 = guidance.deltas(process, out, x, t, None)
        assert delta_t.abs().min() > 0 and delta_0.abs().min() > 0
        guided = guidance.condition_eps(process, out, x, t, None)
        assert torch.equal(guided["eps"], eps)
        abar, abar_prev = float(process.alphas_cumprod[index]), float(process.alphas_cumprod_prev[index])
        addition = delta_t / math.sqrt(abar / abar_prev) + math.sqrt(abar_prev) * delta_0
        for eta in (0.0, 1.0):
            through_x0 = ddim_step(process, guided, x.detach(), index, eta, torch.Generator().manual_seed(1))
            plain = ddim_step(process, out, x.detach(), index, eta, torch.Generator().manual_seed(1))
            torch.testing.assert_close(through_x0, plain + addition, atol=1e-6, rtol=0)
        torch.testing.assert_close(guidance.condition_mean(process, out, x, t, None)["mean"], mean + addition,
                                   atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ DPS
def test_dps_delta_t_is_the_closed_form_through_the_models_jacobian():
    """Delta_t = rho c_t A^T (y_obs - A c_t x_t) / sigma_y^2 (chain rule through x0_hat = c_t x_t), seen as the
    x_0 shift Delta_t / sqrt(abar_t) of the prediction, at several steps of a 64-step grid. Exact up to float32:
    the Jacobian c_t = 1 / sqrt(abar_t) - sqrt(1 / abar_t - 1) e_t is a difference of float32 numbers of size
    1 / sqrt(abar_t) (157 at the last step, where c_t = 1.6e-3), hence a relative error of a few 2^-24 / (sqrt(abar_t)
    c_t): 2e-6 at mid grid, 2e-2 at the noisiest step."""
    process = time_grid("64", DIFFUSION).process(DIFFUSION)
    model = LinearGaussianDenoiser(DIFFUSION)
    guidance = TrainingFreeGuidance(observation_log_likelihood, rho=0.8, rho_schedule="constant")
    guided = GuidedPredictor(model, process, guidance=guidance, clip_denoised=False)
    plain = GuidedPredictor(model, process, clip_denoised=False)
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(3))
    for index in (0, 20, 40, 63):
        abar = float(process.alphas_cumprod[index])
        c = c_of(abar)
        delta_t = 0.8 * c * (Y_OBS - c * x.double() @ A.T) @ A / SIGMA_Y ** 2
        shift = guided.predict(x, index, "eps")["pred_xstart"] - plain.predict(x, index, "eps")["pred_xstart"]
        rtol = 1e-5 + 4 * 2 ** -24 / (math.sqrt(abar) * c)
        torch.testing.assert_close(shift.double(), delta_t / math.sqrt(abar), atol=1e-6, rtol=rtol)
        out = guided.predict(x, index, "eps")
        assert not any(v.requires_grad for v in out.values())  # the sampler gets detached tensors
    # with clipping, Delta_t still differentiates the unclipped x0_hat (clipping would zero the gradient where
    # |c_t x_t| > 1) and the shift moves the clipped x_0 the step is built on
    clipped = GuidedPredictor(model, process, guidance=guidance, clip_denoised=True)
    c = c_of(float(process.alphas_cumprod[0]))
    assert (c * x).abs().max() > 1.5
    delta_t = 0.8 * c * (Y_OBS - c * x.double() @ A.T) @ A / SIGMA_Y ** 2
    expected = (c * x.double()).clamp(-1, 1) + delta_t / math.sqrt(float(process.alphas_cumprod[0]))
    torch.testing.assert_close(clipped.predict(x, 0, "eps")["pred_xstart"].double(), expected, atol=1e-5, rtol=1e-5)


def dps_affine_map(process, rho_t):
    """x_0 = M x_T + b of DDIM (eta = 0) with DPS on the linear-Gaussian problem, integrated in float64: each step
    x_{t-1} = (sqrt(abar_{t-1}) c_t + sqrt(1 - abar_{t-1}) e_t) x_t + Delta_t / sqrt(alpha_t), e_t = eps* / x_t."""
    m, b = torch.eye(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
    for i in range(process.num_timesteps - 1, -1, -1):
        abar, abar_prev = float(process.alphas_cumprod[i]), float(process.alphas_cumprod_prev[i])
        c, e = c_of(abar), math.sqrt(1 - abar) / (abar * S ** 2 + 1 - abar)
        gain = float(rho_t[i]) / math.sqrt(abar / abar_prev) / SIGMA_Y ** 2
        step = (math.sqrt(abar_prev) * c + math.sqrt(1 - abar_prev) * e) * torch.eye(D, dtype=torch.float64) \
            - gain * c * c * A.T @ A
        m, b = step @ m, step @ b + gain * c * A.T @ Y_OBS
    return m, b


def test_dps_sampling_is_the_float64_integration_of_the_linear_problem():
    """DPS (rho = 1, the default ``increase`` schedule) with DDIM (eta = 0, 64 steps): the sampler's x_0 equals
    M x_T + b, the same recursion integrated in float64 by the code above (everything is linear), sample by sample
    (float32 over 64 steps: 2e-5). This check is exact; a comparison with the true posterior N(m, C) of x_0 | y_obs
    is not, and measures DPS's own approximation: its law N(b, M M^T) has mean (0.42, -0.04, 0.26) where the
    posterior's is (0.08, -0.02, 0.06), and variance 0.025 / 0.10 / 0.10 where the posterior's is 0.20 / 0.20 / 0.21
    (DPS ignores Var[x_0 | x_t]: with enough strength it drives A x_0 to y_obs, towards the minimum-norm solution
    A^+ y_obs, whatever sigma_y). At rho = 1 with sigma_y = 0.3 the DPS map is expansive and diverges (its step
    size must be tuned to the grid): sigma_y = 1 keeps it stable."""
    process = time_grid("64", DIFFUSION).process(DIFFUSION)
    m, b = dps_affine_map(process, strength_table(process, 1.0, "increase"))
    x_T = torch.randn(512, D, generator=torch.Generator().manual_seed(0))
    guidance = TrainingFreeGuidance(observation_log_likelihood, rho=1.0)
    x0 = draw(LinearGaussianDenoiser(DIFFUSION), DIFFUSION, x_T, sampler="ddim", steps="64", guidance=guidance)
    torch.testing.assert_close(x0.double(), x_T.double() @ m.T + b, atol=2e-5, rtol=0)
    # the measured gap to the exact posterior (docstring), and DPS's pull towards the minimum-norm solution
    covariance = torch.linalg.inv(torch.eye(D, dtype=torch.float64) / S ** 2 + A.T @ A / SIGMA_Y ** 2)
    posterior_mean = covariance @ A.T @ Y_OBS / SIGMA_Y ** 2
    assert 0.3 < (b - posterior_mean).abs().max() < 0.4
    assert (b - torch.linalg.pinv(A) @ Y_OBS).abs().max() < 0.01
    assert torch.diag(m @ m.T).min() < 0.2 * torch.diag(covariance).min()


# ------------------------------------------------------------------------------------------------ MPGD, schedules
@pytest.mark.parametrize("schedule", ["increase", "decrease", "constant"])
def test_mpgd_moves_x0_by_mu_t_times_the_objective_gradient(schedule):
    """MPGD (mu, one iteration, rho = 0): pred_xstart + mu_t grad log f(x0_hat), eps unchanged, no model
    Jacobian; mu_t = mu s_t N / sum s over the grid."""
    process = DIFFUSION.respace("40")
    guidance = TrainingFreeGuidance(smooth_objective, mu=0.3, iterations=1, mu_schedule=schedule)
    assert not guidance.needs_model_gradient
    table = strength_table(process, 0.3, schedule)
    assert abs(table.mean().item() - 0.3) < 1e-12
    x0 = torch.randn(6, D, generator=torch.Generator().manual_seed(2))
    for index in (0, 17, 39):
        t = torch.full((6,), index, dtype=torch.long)
        out = {"pred_xstart": x0, "eps": torch.zeros_like(x0), "mean": torch.zeros_like(x0)}
        leaf = x0.clone().requires_grad_(True)
        grad, = torch.autograd.grad(smooth_objective(leaf).sum(), leaf)
        guided = guidance.condition_eps(process, out, x0, t, None)
        torch.testing.assert_close(guided["pred_xstart"], x0 + float(table[index]) * grad, atol=1e-6, rtol=1e-6)
        assert torch.equal(guided["eps"], out["eps"])
        rho_t, mu_t, gamma_t = guidance.strengths(process, t, 2)
        assert rho_t.abs().max() == 0 and gamma_t.abs().max() == 0


def test_delta_0_is_n_iter_steps_of_gradient_ascent_from_x0_hat():
    """Delta_0 <- Delta_0 + mu_t grad log f(x0_hat + Delta_0), N_iter = 3 times (each gradient at the moved point)."""
    process = DIFFUSION.respace("10")
    guidance = TrainingFreeGuidance(smooth_objective, mu=0.2, iterations=3, mu_schedule="constant")
    x0 = torch.randn(5, D, generator=torch.Generator().manual_seed(4))
    t = torch.full((5,), 4, dtype=torch.long)
    delta_0 = torch.zeros_like(x0)
    for _ in range(3):
        point = (x0 + delta_0).requires_grad_(True)
        grad, = torch.autograd.grad(smooth_objective(point).sum(), point)
        delta_0 = delta_0 + 0.2 * grad
    out = {"pred_xstart": x0, "eps": torch.zeros_like(x0), "mean": torch.zeros_like(x0)}
    delta_t, computed = guidance.deltas(process, out, x0, t, None)
    assert delta_t.abs().max() == 0
    torch.testing.assert_close(computed, delta_0, atol=1e-6, rtol=1e-6)


def test_the_gamma_schedule():
    process = DIFFUSION.respace("10")
    t = torch.arange(10)
    abar = torch.as_tensor(process.alphas_cumprod, dtype=torch.float64)
    decreasing = TrainingFreeGuidance(smooth_objective, mu=1.0, gamma=0.2).strengths(process, t, 1)[2]
    constant = TrainingFreeGuidance(smooth_objective, mu=1.0, gamma=0.2, gamma_schedule="constant")
    torch.testing.assert_close(decreasing.double(), 0.2 * (1 - abar).sqrt(), atol=1e-7, rtol=0)
    torch.testing.assert_close(constant.strengths(process, t, 1)[2].double(), torch.full((10,), 0.2,
                               dtype=torch.float64), atol=1e-7, rtol=0)


# ------------------------------------------------------------------------------------------------ smoothing
def test_gamma_zero_is_the_objective_itself_and_draws_nothing():
    guidance = TrainingFreeGuidance(smooth_objective, mu=1.0, mc_samples=5).start(generators([1, 2, 3]))
    x0 = torch.randn(3, D, generator=torch.Generator().manual_seed(0))
    states = [g.get_state() for g in guidance.generator]
    assert torch.equal(guidance.smoothed_log_objective(x0, None, 0.0), smooth_objective(x0))
    assert all(torch.equal(s, g.get_state()) for s, g in zip(states, guidance.generator))


def test_smoothing_draws_k_points_per_sample_from_its_own_stream():
    """log f~(x) = log mean_k f(x + gamma eps_k), the K draws of sample i from stream i: sample i alone is
    sample i in a batch of 3."""
    x0 = torch.randn(3, D, generator=torch.Generator().manual_seed(0))
    gamma = torch.tensor([0.1, 0.2, 0.3]).reshape(3, 1)
    batch = TrainingFreeGuidance(smooth_objective, mu=1.0, gamma=0.5, mc_samples=4).start(generators([7, 8, 9]))
    smoothed = batch.smoothed_log_objective(x0, None, gamma)
    for i, seed in enumerate([7, 8, 9]):
        noise = torch.randn(1, 4, D, generator=torch.Generator().manual_seed(seed))
        points = (x0[i] + gamma[i] * noise).reshape(4, D)
        expected = torch.logsumexp(smooth_objective(points), 0) - math.log(4)
        torch.testing.assert_close(smoothed[i], expected, atol=1e-6, rtol=0)
        alone = TrainingFreeGuidance(smooth_objective, mu=1.0, gamma=0.5, mc_samples=4).start(generators([seed]))
        assert torch.equal(alone.smoothed_log_objective(x0[i:i + 1], None, gamma[i:i + 1]), smoothed[i:i + 1])


OVERLAP = GaussianMixture(torch.tensor([[0.3, 0.0], [-0.3, 0.0]]), std=0.2)
CLASSIFIER = MixtureClassifier(OVERLAP, DIFFUSION)


def test_a_sample_does_not_depend_on_its_batch():
    """Full TFG (rho, mu, gamma > 0 with 3 draws, 2 iterations, recurrence 2) on the mixture oracle with per-sample
    generators: sample i of a batch of 3 is sample i drawn alone."""
    model = MixtureDenoiser(OVERLAP, DIFFUSION)
    guidance = TrainingFreeGuidance(ClassLogProb(CLASSIFIER), rho=0.5, mu=0.2, gamma=0.1, mc_samples=3,
                                    iterations=2, recurrence=2)
    y = torch.tensor([0, 1, 0])
    for sampler in ("ddim", "ddpm"):
        options = dict(sampler=sampler, steps="8", guidance=guidance)
        batch = draw(model, DIFFUSION, (3, 2), generator=generators([4, 5, 6]), y=y, **options)
        for i, seed in enumerate([4, 5, 6]):
            alone = draw(model, DIFFUSION, (1, 2), generator=generators([seed]), y=y[i:i + 1], **options)
            torch.testing.assert_close(alone[0], batch[i], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ recurrence
def manual_loop(model, process, guidance, x, y, sampler, recurrence, generator):
    """Each step by hand: predict, update, re-noise (x_t = sqrt(alpha_t) x_{t-1} + sqrt(1 - alpha_t) z)."""
    predictor = GuidedPredictor(model, process, y=y, guidance=guidance, clip_denoised=False, generator=generator)
    for i in range(process.num_timesteps - 1, -1, -1):
        alpha = float(process.alphas_cumprod[i] / process.alphas_cumprod_prev[i])
        x_prev = None
        for r in range(recurrence):
            if r:
                z = torch.randn(x.shape, generator=generator)
                x = math.sqrt(alpha) * x_prev + math.sqrt(1 - alpha) * z
            form = "eps" if sampler == "ddim" else "mean"
            out = predictor.predict(x, i, form)
            if sampler == "ddim":
                x_prev = ddim_step(process, out, x, i, 0.0)
            elif i > 0:
                x_prev = out["mean"] + torch.exp(0.5 * out["log_variance"]) * torch.randn(x.shape, generator=generator)
            else:
                x_prev = out["mean"]
        x = x_prev
    return x


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("recurrence", [1, 2, 3])
def test_the_samplers_walk_the_recurrence(sampler, recurrence):
    """recurrence 1 is predict-then-update bit for bit (no re-noising); more re-noise by q(x_t | x_{t-1})."""
    model = MixtureDenoiser(OVERLAP, DIFFUSION)
    guidance = TrainingFreeGuidance(ClassLogProb(CLASSIFIER), rho=0.5, mu=0.2, recurrence=recurrence)
    y = torch.tensor([0, 1, 1, 0])
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    ran = draw(model, DIFFUSION, x_T, sampler=sampler, steps="6", y=y, guidance=guidance,
               generator=torch.Generator().manual_seed(1))
    expected = manual_loop(model, DIFFUSION.respace("6"), guidance, x_T, y, sampler, recurrence,
                           torch.Generator().manual_seed(1))
    assert torch.equal(ran, expected)


def test_in_a_chain_it_gets_the_models_graph_and_its_recurrence():
    """A guidance list holding TFG samples exactly as TFG alone (the predictor looks into chains)."""
    model = MixtureDenoiser(OVERLAP, DIFFUSION)
    guidance = TrainingFreeGuidance(ClassLogProb(CLASSIFIER), rho=0.5, recurrence=2)
    y = torch.tensor([0, 1])
    alone, chained = (draw(model, DIFFUSION, (2, 2), sampler="ddim", steps="5", y=y, guidance=g,
                           generator=generators([1, 2])) for g in (guidance, [guidance]))
    assert torch.equal(alone, chained)


def test_renoise_draws_q_x_t_given_x_prev():
    """x_t = sqrt(alpha_t) x_{t-1} + sqrt(1 - alpha_t) z: exactly with a fixed generator, and in distribution on a
    constant input (mean sqrt(alpha_t) c, variance 1 - alpha_t; 4 standard errors)."""
    process = DIFFUSION.respace("20")
    predictor = GuidedPredictor(LinearGaussianDenoiser(DIFFUSION), process, generator=torch.Generator().manual_seed(3))
    for index in (0, 10, 19):
        alpha = float(process.alphas_cumprod[index] / process.alphas_cumprod_prev[index])
        x_prev = torch.full((40000, 1), 0.7)
        z = torch.randn(x_prev.shape, generator=copy.deepcopy(predictor.generator))
        x_t = predictor.renoise(x_prev, index)
        torch.testing.assert_close(x_t, math.sqrt(alpha) * x_prev + math.sqrt(1 - alpha) * z, atol=1e-6, rtol=0)
        n = x_t.numel()
        assert abs(x_t.mean().item() - math.sqrt(alpha) * 0.7) < 4 * math.sqrt((1 - alpha) / n)
        assert abs(x_t.var().item() / (1 - alpha) - 1) < 4 * math.sqrt(2 / n)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver"])
def test_rho_and_mu_zero_is_exactly_unguided(sampler):
    model = MixtureDenoiser(OVERLAP, DIFFUSION)
    y = torch.tensor([0, 1, 1])
    guidance = TrainingFreeGuidance(ClassLogProb(CLASSIFIER), gamma=0.3, mc_samples=4, recurrence=3)
    assert not guidance.active
    plain = draw(model, DIFFUSION, (3, 2), sampler=sampler, steps="10", generator=generators([1, 2, 3]))
    guided = draw(model, DIFFUSION, (3, 2), sampler=sampler, steps="10", y=y, guidance=guidance,
                  generator=generators([1, 2, 3]))
    assert torch.equal(plain, guided)


# ------------------------------------------------------------------------------------------------ cost, effect
def test_cost_per_step_counted_by_the_networks():
    """Per sample and step: N_recur model rows; N_recur K (1 + N_iter) classifier rows (rho > 0, mu > 0)."""
    model = MixtureDenoiser(OVERLAP, DIFFUSION)
    classifier = MixtureClassifier(OVERLAP, DIFFUSION)
    guidance = TrainingFreeGuidance(ClassLogProb(classifier), rho=0.5, mu=0.2, gamma=0.1, mc_samples=3,
                                    iterations=2, recurrence=2)
    assert guidance.network_roles() == [("classifier", classifier)]
    rows = {"model": 0, "classifier": 0}
    model.register_forward_hook(lambda m, args, out: rows.__setitem__("model", rows["model"] + args[0].shape[0]))
    classifier.register_forward_hook(
        lambda m, args, out: rows.__setitem__("classifier", rows["classifier"] + args[0].shape[0]))
    draw(model, DIFFUSION, (4, 2), sampler="ddim", steps="5", y=torch.zeros(4, dtype=torch.long), guidance=guidance,
         generator=generators(range(4)))
    assert rows == {"model": 4 * 5 * 2, "classifier": 4 * 5 * 2 * 3 * (1 + 2)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_pulls_samples_to_the_class(name):
    """Each method's preset, with the clean classifier's log p(y | x_0) as the objective and its strengths (rho, mu)
    set to 0.01, makes the samples of two overlapping classes land on their label's side (unguided: 51% there; each
    preset measured: 98.5-100%) and keeps them in the data's range (|x| < 0.6 measured). The presets' placeholder
    strength 1 is far too strong for this objective, whose gradient reaches 15 (|x| up to 10 with ugd): strengths
    are tuned per objective."""
    model = MixtureDenoiser(OVERLAP, DIFFUSION)
    y = torch.arange(2).repeat(100)
    strengths = {key: 0.01 for key in ("rho", "mu") if PRESETS[name][key] > 0}
    guidance = preset(name, make_objective("class-log-prob", CLASSIFIER, temperature=1.0), **strengths)
    x = draw(model, DIFFUSION, (200, 2), sampler="ddim", steps="10", y=y, guidance=guidance,
             generator=generators(range(200)))
    on_side = ((x[:, 0] < 0).long() == y).double().mean().item()
    assert on_side > 0.9 and x.abs().max() < 1.0, (name, on_side, x.abs().max())


def test_presets_are_the_methods_settings():
    dps, freedom = preset("dps", smooth_objective), preset("freedom", smooth_objective)
    mpgd, ugd = preset("mpgd", smooth_objective, mu=0.5), preset("ugd", smooth_objective)
    assert dps.rho > 0 and dps.mu == 0 and dps.recurrence == 1 and dps.needs_model_gradient
    assert freedom.rho > 0 and freedom.mu == 0 and freedom.recurrence > 1
    assert mpgd.rho == 0 and mpgd.mu == 0.5 and mpgd.iterations == 1 and not mpgd.needs_model_gradient
    assert ugd.rho > 0 and ugd.mu > 0 and ugd.iterations > 1 and ugd.recurrence > 1
    assert preset("tfg", smooth_objective).gamma > 0
    assert list(OBJECTIVES) == ["class-log-prob"]


# ------------------------------------------------------------------------------------------------ refusals
def test_dpm_solver_refuses_before_any_model_evaluation():
    model = MixtureDenoiser(OVERLAP, DIFFUSION)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    for guidance in (TrainingFreeGuidance(smooth_objective, rho=1.0),
                     [TrainingFreeGuidance(smooth_objective, mu=1.0, recurrence=2)]):
        with pytest.raises(ValueError, match="cannot run on dpm-solver") as error:
            draw(model, DIFFUSION, (2, 2), sampler="dpm-solver", steps=10, guidance=guidance)
        assert one_line(error) and str(error.value) == X0_SHIFT_REFUSAL
    assert not calls


@pytest.mark.parametrize("sampler", [name for name, spec in SAMPLERS.items() if spec.family == "sde"])
def test_sde_samplers_refuse_in_one_line(sampler):
    model = MixtureDenoiser(OVERLAP, DIFFUSION)
    with pytest.raises(ValueError, match="cannot run on the SDE/ODE samplers") as error:
        draw(model, DIFFUSION, (2, 2), sampler=sampler, steps="10", guidance=TrainingFreeGuidance(smooth_objective,
                                                                                                  mu=1.0))
    assert one_line(error) and str(error.value) == SDE_REFUSAL


@pytest.mark.parametrize("kwargs, message", [
    (dict(objective=3), "the objective must be callable"),
    (dict(rho=-1.0), "rho must be finite and non-negative"),
    (dict(mu=float("nan")), "mu must be finite and non-negative"),
    (dict(gamma=float("inf")), "gamma must be finite and non-negative"),
    (dict(mc_samples=0), "mc_samples must be an integer >= 1"),
    (dict(mc_samples=1.5), "mc_samples must be an integer >= 1"),
    (dict(iterations=-1), "iterations must be an integer >= 0"),
    (dict(recurrence=0), "recurrence must be an integer >= 1"),
    (dict(recurrence=True), "recurrence must be an integer >= 1"),
    (dict(mu=1.0, iterations=0), "mu > 0 needs iterations >= 1"),
    (dict(rho_schedule="linear"), "rho_schedule must be one of increase, decrease, constant"),
    (dict(mu_schedule=None), "mu_schedule must be one of"),
    (dict(gamma_schedule="increase"), "gamma_schedule must be one of decrease, constant"),
])
def test_bad_arguments_are_one_line(kwargs, message):
    kwargs = {"objective": smooth_objective, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        TrainingFreeGuidance(kwargs.pop("objective"), **kwargs)
    assert one_line(error)


@pytest.mark.parametrize("call, message", [
    (lambda: ClassLogProb(CLASSIFIER, temperature=0), "temperature must be finite and > 0"),
    (lambda: ClassLogProb(CLASSIFIER, timestep=-1), "timestep must be an integer >= 0 or None"),
    (lambda: ClassLogProb("net"), "the classifier must be callable"),
    (lambda: make_objective("clip-score"), "unknown training-free objective 'clip-score'"),
    (lambda: preset("dpm", smooth_objective), "unknown training-free guidance preset 'dpm'"),
    (lambda: ClassLogProb(CLASSIFIER)(torch.zeros(2, 2), None), "needs class labels y"),
    (lambda: ClassLogProb(CLASSIFIER)(torch.zeros(2, 2), torch.tensor([0, 2])), "label"),
    (lambda: TrainingFreeGuidance(lambda x0, y: x0, mu=1.0).smoothed_log_objective(torch.zeros(2, 2), None),
     r"must return log f per sample, shape \(2,\)"),
])
def test_bad_objectives_are_one_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert one_line(error)


def test_delta_t_without_the_models_graph_is_refused():
    guidance = TrainingFreeGuidance(smooth_objective, rho=1.0)
    x0 = torch.zeros(2, D)
    out = {"pred_xstart": x0, "eps": x0, "mean": x0}
    with pytest.raises(ValueError, match="needs the model's Jacobian") as error:
        guidance.condition_eps(DIFFUSION, out, x0, torch.zeros(2, dtype=torch.long), None)
    assert one_line(error)
