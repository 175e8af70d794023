"""The sampler registry: every name once, with its family, its options and its grid rule; respacing read once."""
from typing import Literal, get_args, get_origin

import pytest
import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.mixture import GaussianMixture, MixtureDenoiser
from guided_diffusion.sampling import (
    SAMPLERS,
    SDE_SAMPLERS,
    SamplerName,
    TimeGrid,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    get_sampler,
    sample,
    time_grid,
)
from guided_diffusion.sde import SCORE_SAMPLERS

DIFFUSION = GaussianDiffusion.from_schedule("linear", 100, var_type="fixed_small")
MODEL = MixtureDenoiser(GaussianMixture(torch.tensor([[0.5, 0.5], [-0.5, -0.5]]), std=0.1), DIFFUSION)
#: A valid value of every option some sampler declares.
OPTION_VALUES = {"eta": 0.5, "order": 1, "predictor": "euler_maruyama", "corrector": "none", "snr": 0.2,
                 "corrector_steps": 2, "langevin_norms": "batch", "denoise": False, "timesteps": "interpolate",
                 "steps_per_level": 2, "step_size": 1e-6}


def draw(sampler, steps="ddim5", **options):
    return sample(MODEL, DIFFUSION, (3, 2), sampler=sampler, steps=steps, progress=False,
                  generator=torch.Generator().manual_seed(0), clip_denoised=False, **options)


def test_sampler_name_is_the_literal_of_exactly_the_registered_names():
    assert get_origin(SamplerName) is Literal
    assert get_args(SamplerName) == tuple(SAMPLERS)
    assert all(SAMPLERS[name].name == name and get_sampler(name) is SAMPLERS[name] for name in SAMPLERS)
    with pytest.raises(TypeError):
        SAMPLERS["euler"] = SAMPLERS["ddim"]  # read-only


def test_families_functions_and_defaults():
    assert {name: spec.family for name, spec in SAMPLERS.items()} == {
        "ddpm": "diffusion", "ddim": "diffusion", "dpm-solver": "diffusion", "pc": "sde", "euler-maruyama": "sde",
        "reverse-diffusion": "sde", "annealed-langevin": "sde"}
    assert (SAMPLERS["ddpm"].function, SAMPLERS["ddim"].function, SAMPLERS["dpm-solver"].function) == (
        ddpm_sample, ddim_sample, dpm_solver_sample)
    assert {name: spec.default_steps for name, spec in SAMPLERS.items()} == {
        "ddpm": "250", "ddim": "ddim25", "dpm-solver": "20", "pc": "250", "euler-maruyama": "250",
        "reverse-diffusion": "250", "annealed-langevin": "250"}
    # the SDE family is the fixed-grid score samplers, each declared once in guided_diffusion.sde
    fixed = tuple(name for name, spec in SCORE_SAMPLERS.items() if spec.grid == "fixed")
    assert fixed == SDE_SAMPLERS == tuple(name for name, spec in SAMPLERS.items() if spec.family == "sde")
    assert "ode" in SCORE_SAMPLERS and SCORE_SAMPLERS["ode"].grid == "adaptive" and "ode" not in SAMPLERS
    assert all(spec.description and "\n" not in spec.description for spec in SAMPLERS.values())


def test_the_derived_lists_of_other_modules():
    from guided_diffusion.training.ncsn_module import NCSN_SAMPLERS, NCSNSampler

    assert NCSN_SAMPLERS == tuple(SCORE_SAMPLERS) == get_args(NCSNSampler)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_declared_option_is_taken_and_changes_nothing_else(name):
    spec = SAMPLERS[name]
    default = draw(name)
    for option in sorted(spec.options):
        out = draw(name, **{option: OPTION_VALUES[option]})
        assert out.shape == (3, 2) and torch.isfinite(out).all(), option
        if option == "timesteps":  # the bridge's grid times are the model's own timesteps: round = interpolate
            assert torch.equal(out, default), option
        else:  # the option reaches the sampler
            assert not torch.equal(out, default), option


def test_an_option_of_another_sampler_or_of_none_is_one_clear_line():
    with pytest.raises(ValueError, match=r"^eta is an option of ddim; sampler 'pc' does not take it$"):
        draw("pc", eta=0.5)
    with pytest.raises(ValueError, match=r"^order is an option of dpm-solver; sampler 'ddim' does not take it$"):
        draw("ddim", order=1)
    with pytest.raises(ValueError, match=r"^snr is an option of pc; sampler 'ddpm' does not take it$"):
        draw("ddpm", snr=0.1)
    with pytest.raises(ValueError, match=r"^denoise is an option of pc, euler-maruyama, reverse-diffusion, "
                                         r"annealed-langevin; sampler 'ddim' does not take it$"):
        draw("ddim", denoise=False)
    with pytest.raises(ValueError, match=r"^unknown option 'foo' of sampler 'ddim'; it takes clip_denoised, "
                                         r"denoised_fn, eta, model_kwargs$"):
        draw("ddim", foo=1)
    SAMPLERS["ddim"].check_options({"eta": 0.1, "clip_denoised": False, "model_kwargs": None})


def test_an_unknown_name_is_one_clear_line():
    message = ("unknown sampler 'euler'; expected one of ddpm, ddim, dpm-solver, pc, euler-maruyama, "
               "reverse-diffusion, annealed-langevin")
    for call in (lambda: get_sampler("euler"), lambda: draw("euler"), lambda: time_grid("20", DIFFUSION, "euler")):
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == message


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_respacing_is_read_once_per_call(name, monkeypatch):
    respace, calls = GaussianDiffusion.respace, []

    def spy(self, spec):
        calls.append(spec)
        return respace(self, spec)

    monkeypatch.setattr(GaussianDiffusion, "respace", spy)
    by_spec = draw(name, "ddim5")
    assert calls == ["ddim5"]
    grid = time_grid("ddim5", DIFFUSION, name)
    assert len(calls) == 2
    by_grid = draw(name, grid)
    assert len(calls) == 2 and torch.equal(by_grid, by_spec)  # a grid is not read again, and is the same grid
    draw(name, None)
    assert calls[2:] == (["quad20"] if name == "dpm-solver" else [])


def test_time_grids_and_the_plain_count_rule():
    every = time_grid(None, DIFFUSION)
    assert every.timesteps == tuple(range(100)) and not every.respaced and every.process(DIFFUSION) is DIFFUSION
    assert time_grid("ddim10", DIFFUSION).timesteps == tuple(range(0, 100, 10))
    quad = time_grid("quad10", DIFFUSION)
    assert quad.timesteps[:3] == (0, 1, 5) and quad.timesteps[-1] == 99
    # a plain count: time-quadratic for dpm-solver, evenly strided for every other sampler
    assert time_grid("10", DIFFUSION, "dpm-solver") == time_grid(10, DIFFUSION, "dpm-solver") == quad
    assert time_grid(None, DIFFUSION, "dpm-solver") == time_grid("quad20", DIFFUSION)
    for name in ("ddim", "ddpm", "pc"):
        assert time_grid("10", DIFFUSION, name) == time_grid(10, DIFFUSION) != quad
        assert time_grid(None, DIFFUSION, name) == every
    assert time_grid("ddim10", DIFFUSION, "dpm-solver") == time_grid("ddim10", DIFFUSION)
    # a grid of original timesteps on a respaced process: its steps, with the model's timesteps
    respaced = DIFFUSION.respace("50")
    assert time_grid("5", respaced).timesteps == tuple(respaced.timestep_map[[0, 12, 24, 37, 49]].tolist())


def test_bad_grids_fail_with_one_line():
    for call in (lambda: time_grid("fast", DIFFUSION), lambda: draw("ddim", "fast"), lambda: draw("pc", "fast")):
        with pytest.raises(ValueError, match=r"^cannot parse respacing 'fast': expected e.g. '250', '10,15,20' or "
                                             r"'ddim25'$"):
            call()
    with pytest.raises(ValueError, match="asks for 200 steps but the diffusion has 100"):
        time_grid("quad200", DIFFUSION, "dpm-solver")
    with pytest.raises(ValueError, match="strictly increasing"):
        TimeGrid((5, 3))
    with pytest.raises(ValueError, match="strictly increasing"):
        TimeGrid(())
    with pytest.raises(ValueError, match="not all steps of the diffusion"):
        draw("ddim", TimeGrid((0, 100)))
    with pytest.raises(ValueError, match="^this time grid is every step of a 50-step process, not of this 100-step "
                                         "one$"):
        draw("pc", TimeGrid(tuple(range(0, 100, 2)), respaced=False))


def test_ddim_inversion_reports_each_step_upwards():
    x0 = torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    steps = []
    latent = ddim_invert(MODEL, DIFFUSION, x0, steps="ddim5", progress=False, callback=steps.append)
    assert [s["t"] for s in steps] == [0, 20, 40, 60, 80] and [s["i"] for s in steps] == list(range(5))
    assert torch.equal(steps[-1]["sample"], latent)
    assert torch.equal(latent, ddim_invert(MODEL, DIFFUSION, x0, steps=time_grid("ddim5", DIFFUSION), progress=False))
