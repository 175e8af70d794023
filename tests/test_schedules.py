"""Noise schedules and respacing: closed forms, the reference's buffers and maps, bad input."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from guided_diffusion.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    cosine_beta_schedule,
    get_named_beta_schedule,
    linear_beta_schedule,
    space_timesteps,
)

FIXTURE = Path(__file__).parent / "fixtures" / "adm_parity_small.pt"


@pytest.fixture(scope="module")
def buffers():
    return torch.load(FIXTURE, weights_only=False)["diffusion_buffers"]


def test_linear_schedule_end_points_scale_with_T():
    betas = linear_beta_schedule(1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    betas = linear_beta_schedule(4000)
    assert betas[0] == pytest.approx(0.25e-4) and betas[-1] == pytest.approx(0.005)
    assert np.all(np.diff(betas) > 0)


def test_cosine_schedule_follows_alpha_bar_and_is_clipped():
    T, s = 1000, 0.008
    betas = cosine_beta_schedule(T)
    abar = np.cumprod(1 - betas)
    f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f((i + 1) / T) / f(0) for i in range(T)])
    unclipped = betas < 0.999
    np.testing.assert_allclose(abar[unclipped], expected[unclipped], rtol=1e-10)
    assert betas.max() == pytest.approx(0.999)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_buffers_equal_the_reference(buffers, name):
    diffusion = GaussianDiffusion.from_schedule(name, 1000)
    for key, ref in buffers[name].items():
        np.testing.assert_allclose(getattr(diffusion, key), ref.numpy(), rtol=1e-6, atol=0, err_msg=key)


@pytest.mark.parametrize("spec", ["250", "ddim25", "10,15,20"])
def test_respacing_maps_and_betas_equal_the_reference(buffers, spec):
    respaced = GaussianDiffusion.from_schedule("linear", 1000).respace(spec)
    ref = buffers[f"linear_respaced_{spec}"]
    assert torch.equal(respaced.timestep_map, ref["timestep_map"])
    np.testing.assert_allclose(respaced.betas, ref["betas"].numpy(), rtol=1e-6)


def test_respacing_keeps_the_marginals_at_kept_steps():
    base = GaussianDiffusion.from_schedule("cosine", 1000)
    respaced = base.respace("ddim50")
    np.testing.assert_allclose(respaced.alphas_cumprod, base.alphas_cumprod[respaced.timestep_map.numpy()],
                               rtol=1e-12)


def test_respacing_composes_to_original_timesteps():
    base = GaussianDiffusion.from_schedule("linear", 1000)
    twice = base.respace("100").respace("10")
    once = space_timesteps(1000, "100")
    expected = [once[i] for i in space_timesteps(100, "10")]
    assert twice.timestep_map.tolist() == expected
    np.testing.assert_allclose(twice.alphas_cumprod, base.alphas_cumprod[expected], rtol=1e-12)


def test_space_timesteps_forms():
    assert space_timesteps(10, "") == list(range(10))
    assert space_timesteps(10, 10) == list(range(10))
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(100, "1") == [0]
    # Sections: first and last step of each section are kept.
    kept = space_timesteps(300, "2,3,4")
    assert kept[:2] == [0, 99] and kept[2:5] == [100, 150, 199] and kept[-1] == 299
    assert space_timesteps(300, [2, 3, 4]) == kept


@pytest.mark.parametrize("spec, message", [
    ("2000", "asks for|cannot take"),
    ("ddim2000", "asks for"),
    ("ddim7x", "cannot parse"),
    ("ten", "cannot parse"),
    ("10,,20", "cannot parse"),
    ("0", "positive"),
    ("ddim999", "no integer stride"),
])
def test_bad_respacing_strings_name_the_value(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        space_timesteps(1000, spec)
    assert repr(spec) in str(info.value)


def test_bad_schedule_and_betas():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        get_named_beta_schedule("quadratic", 1000)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        GaussianDiffusion([0.1, 0.0, 0.2])
    with pytest.raises(ValueError, match="positive integer"):
        cosine_beta_schedule(0)
    with pytest.raises(ValueError, match="more than 20 steps"):
        linear_beta_schedule(20)
    with pytest.raises(ValueError, match="unknown var_type 'learnt'"):
        GaussianDiffusion(linear_beta_schedule(50), var_type="learnt")


def test_explicit_beta_array():
    betas = np.full(50, 0.02)
    diffusion = GaussianDiffusion(betas)
    np.testing.assert_allclose(diffusion.alphas_cumprod, 0.98 ** np.arange(1, 51))


def test_config_maps_reference_flags_to_typed_options():
    d = DiffusionConfig(steps=1000, noise_schedule="cosine", learn_sigma=True).build()
    assert (d.mean_type, d.var_type, d.loss_type) == ("eps", "learned_range", "mse")
    config = DiffusionConfig(steps=100, sigma_small=True, use_kl=True, rescale_learned_sigmas=True,
                             predict_xstart=True, timestep_respacing="10")
    d = config.build_for_sampling()
    assert (d.mean_type, d.var_type, d.loss_type, d.num_timesteps) == ("x0", "fixed_small", "rescaled_kl", 10)
    assert config.build().num_timesteps == 100  # training never respaces


def test_use_kl_trains_on_T_times_the_closed_form_kl():
    """``use_kl`` alone (``rescaled_kl``): the loss is T x KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) in bits per
    dimension, with p's mean from eps and its variance interpolated in log space between beta_t and the posterior's
    (learned_range), all written out here from the schedule in float64."""
    steps = 50
    d = DiffusionConfig(steps=steps, noise_schedule="cosine", learn_sigma=True, use_kl=True).build()
    assert d.loss_type == "rescaled_kl"
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 4, 4, generator=generator) * 2 - 1
    noise = torch.randn(4, 3, 4, 4, generator=generator)
    t = torch.tensor([3, 17, 30, 49])
    model = lambda x, timesteps, **kw: torch.cat([0.5 * x, torch.full_like(x, 0.3)], dim=1)  # noqa: E731
    loss = d.training_losses(model, x0, t, noise=noise)["loss"]

    betas = torch.from_numpy(np.asarray(get_named_beta_schedule("cosine", steps), dtype=np.float64))
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    b, a, ap = (v[t].view(-1, 1, 1, 1) for v in (betas, abar, abar_prev))
    x0, noise = x0.double(), noise.double()
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    posterior = lambda start: (ap.sqrt() * b / (1 - a)) * start + ((1 - b).sqrt() * (1 - ap) / (1 - a)) * x_t  # noqa
    var_q = b * (1 - ap) / (1 - a)
    pred_x0 = (x_t - (1 - a).sqrt() * (0.5 * x_t)) / a.sqrt()
    frac = (0.3 + 1) / 2
    log_var_p = frac * b.log() + (1 - frac) * var_q.log()
    kl = 0.5 * (-1 + log_var_p - var_q.log() + (var_q.log() - log_var_p).exp()
                + (posterior(x0) - posterior(pred_x0)) ** 2 / log_var_p.exp())
    expected = steps * kl.mean(dim=(1, 2, 3)) / math.log(2.0)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-6)
