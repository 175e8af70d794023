"""The one sampler signature: the per-step callback, reproducibility, respacing, bad input."""
import pytest
import torch

from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.mixture import GaussianMixture, MixtureDenoiser
from guided_diffusion.sampling import SAMPLERS, ddim_invert, sample

from .helpers import parity_fixture

DIFFUSION = DiffusionConfig(steps=1000, noise_schedule="cosine").build()
MIXTURE = GaussianMixture(torch.tensor([[0.5, 0.5], [-0.5, -0.5]]), std=0.1)
MODEL = MixtureDenoiser(MIXTURE, DIFFUSION)


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_the_callback_sees_every_step_with_original_timesteps(sampler):
    steps = []
    returned = sample(MODEL, DIFFUSION, (3, 2), sampler=sampler, steps="ddim10", progress=False,
                      generator=torch.Generator().manual_seed(0), callback=steps.append)
    assert [s["i"] for s in steps] == list(range(10))
    assert [s["t"] for s in steps] == list(range(900, -1, -100))
    assert all(s["sample"].shape == (3, 2) and s["pred_xstart"].shape == (3, 2) for s in steps)
    final = sample(MODEL, DIFFUSION, (3, 2), sampler=sampler, steps="ddim10", progress=False,
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(final, steps[-1]["sample"]) and torch.equal(final, returned)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_per_sample_generators_make_samples_independent_of_the_batch(sampler):
    """Sample i depends only on generator i: splitting a batch (or spreading it over ranks) changes nothing."""
    whole = sample(MODEL, DIFFUSION, (4, 2), sampler=sampler, steps="20", generator=generators([1, 2, 3, 4]),
                   progress=False)
    halves = [sample(MODEL, DIFFUSION, (2, 2), sampler=sampler, steps="20", generator=generators(seeds),
                     progress=False) for seeds in ([1, 2], [3, 4])]
    torch.testing.assert_close(whole, torch.cat(halves), atol=1e-6, rtol=0)
    again = sample(MODEL, DIFFUSION, (4, 2), sampler=sampler, steps="20", generator=generators([1, 2, 3, 4]),
                   progress=False)
    assert torch.equal(whole, again)


def test_given_noise_is_used_and_dpm_solver_of_order_1_is_ddim():
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    ddim = sample(MODEL, DIFFUSION, x_T, sampler="ddim", steps="ddim20", progress=False)
    first_order = sample(MODEL, DIFFUSION, x_T, sampler="dpm-solver", steps="ddim20", order=1, progress=False)
    torch.testing.assert_close(ddim, first_order, atol=1e-5, rtol=0)
    assert torch.equal(x_T, torch.randn(5, 2, generator=torch.Generator().manual_seed(0)))  # not modified


def test_progress_bar_can_be_turned_off(capsys):
    sample(MODEL, DIFFUSION, (2, 2), sampler="ddim", steps="ddim5", progress=False)
    assert "ddim" not in capsys.readouterr().err
    sample(MODEL, DIFFUSION, (2, 2), sampler="ddim", steps="ddim5", progress=True)
    assert "ddim" in capsys.readouterr().err


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_inversion_reconstructs_fixture_images(schedule):
    """The reference fixture's four 3x32x32 images as the components of an image-space oracle: a
    draw near each image is inverted to a latent, and sampling the latent back (eta = 0) returns it."""
    images = parity_fixture()["inputs"]["x0"]
    mixture = GaussianMixture(images, std=0.05)
    diffusion = DiffusionConfig(steps=1000, noise_schedule=schedule).build()
    model = MixtureDenoiser(mixture, diffusion)
    x0, _ = mixture.sample(4, generator=torch.Generator().manual_seed(0), labels=torch.arange(4))
    errors = {}
    for iterations in (0, 3):
        x_T = ddim_invert(model, diffusion, x0, steps="ddim50", fixed_point_iterations=iterations, progress=False)
        assert (x_T - x0).abs().mean() > 0.5  # a latent, not a slightly noisy image
        rebuilt = sample(model, diffusion, x_T, sampler="ddim", steps="ddim50", progress=False, clip_denoised=False)
        errors[iterations] = (rebuilt - x0).abs()
    assert errors[0].mean() < 0.03  # the classic explicit inversion: a small, systematic error
    assert errors[3].mean() < 0.006 and errors[3].max() < 0.03  # refined towards the exact inverse


def test_bad_sampler_options():
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sample(MODEL, DIFFUSION, (2, 2), sampler="euler")
    with pytest.raises(ValueError, match="eta must lie in"):
        sample(MODEL, DIFFUSION, (2, 2), sampler="ddim", eta=1.5)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        sample(MODEL, DIFFUSION, (2, 2), sampler="dpm-solver", order=3)
    with pytest.raises(ValueError, match="cannot parse respacing 'fast'"):
        sample(MODEL, DIFFUSION, (2, 2), sampler="ddpm", steps="fast")
    with pytest.raises(ValueError, match="fixed_point_iterations must be >= 0"):
        ddim_invert(MODEL, DIFFUSION, torch.zeros(2, 2), fixed_point_iterations=-1)
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        sample(MODEL, DIFFUSION, (2, 2), generator=generators([1, 2, 3]), progress=False)
