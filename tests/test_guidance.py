"""Guidance: numerical parity with the reference, and the contract every sampler relies on."""
import math

import pytest
import torch

from classifiers import EncoderUNet, EncoderUNetConfig
from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.mixture import GaussianMixture, MixtureClassifier, MixtureDenoiser
from guided_diffusion.nets import UNet
from guided_diffusion.presets import config_from_openai_flags
from guided_diffusion.sampling import ClassifierFreeGuidance, ClassifierGuidance, check_scale, ddim_step, sample

from .helpers import parity_fixture, reference_state_dict


@pytest.fixture(scope="module")
def reference():
    """The reference's guided case: UNet, classifier and diffusion with the fixture weights."""
    fx = parity_fixture()
    case = fx["cases"][fx["classifier"]["guided_case"]]
    _, config, settings = config_from_openai_flags(case["flags"], num_classes=case["num_classes"])
    model = UNet(config)
    model.load_state_dict(reference_state_dict(case["keys"]))
    kwargs = fx["classifier"]["kwargs"]
    classifier = EncoderUNet(EncoderUNetConfig(
        image_size=kwargs["image_size"], model_channels=kwargs["model_channels"],
        num_res_blocks=kwargs["num_res_blocks"], channel_mult=kwargs["channel_mult"],
        attention_resolutions=tuple(kwargs["image_size"] // ds for ds in kwargs["attention_resolutions"]),
        num_head_channels=kwargs["num_head_channels"], use_scale_shift_norm=kwargs["use_scale_shift_norm"],
        resblock_updown=kwargs["resblock_updown"], pool=kwargs["pool"], num_classes=kwargs["out_channels"]))
    classifier.load_state_dict(reference_state_dict(fx["classifier"]["keys"]))
    diffusion = DiffusionConfig(steps=settings.steps, noise_schedule=settings.noise_schedule,
                                learn_sigma=settings.learn_sigma).build()
    return dict(model=model.eval(), classifier=classifier.eval(), diffusion=diffusion, x_t=case["outputs"]["x_t"],
                t=fx["inputs"]["t"], y=fx["inputs"]["y"], out=fx["classifier"]["outputs"],
                scale=fx["classifier"]["guidance_scale"])


def assert_close_scaled(actual, expected, diffusion, t, atol=1e-5):
    """x_0 at timestep t is a difference of terms of size 1 / sqrt(abar_t) (2e4 at t = 999 under
    the cosine schedule), so float32 agreement is relative to that size."""
    scale = torch.as_tensor(diffusion.sqrt_recip_alphas_cumprod[t.numpy()], dtype=torch.float32)
    error = (actual - expected).abs().flatten(1).max(1).values
    assert (error <= atol * scale.clamp(min=1)).all(), (error, scale)


@pytest.fixture(scope="module")
def prediction(reference):
    r = reference
    with torch.no_grad():
        return r["diffusion"].p_mean_variance(r["model"], r["x_t"], r["t"], y=r["y"], clip_denoised=True)


def test_classifier_logits_and_scaled_gradient_equal_the_reference(reference):
    r = reference
    torch.testing.assert_close(r["classifier"](r["x_t"], r["t"]), r["out"]["clf_logits"], atol=1e-5, rtol=1e-5)
    grad = ClassifierGuidance(r["classifier"], r["scale"]).grad_log_prob(r["x_t"], r["t"], r["y"])
    torch.testing.assert_close(grad, r["out"]["cond_grad_scale2"], atol=1e-7, rtol=1e-5)


def test_condition_mean_equals_the_reference(reference, prediction):
    r = reference
    guidance = ClassifierGuidance(r["classifier"], r["scale"])
    out = guidance.condition_mean(r["diffusion"], prediction, r["x_t"], r["t"], r["y"])
    torch.testing.assert_close(out["mean"], r["out"]["condition_mean_scale2"], atol=1e-5, rtol=1e-5)


def test_condition_score_equals_the_reference(reference, prediction):
    r = reference
    guidance = ClassifierGuidance(r["classifier"], r["scale"])
    out = guidance.condition_eps(r["diffusion"], prediction, r["x_t"], r["t"], r["y"])
    expected = r["out"]["condition_score_scale2"]
    for key in ("mean", "variance", "log_variance"):
        torch.testing.assert_close(out[key], expected[key], atol=1e-5, rtol=1e-5, msg=key)
    assert_close_scaled(out["pred_xstart"], expected["pred_xstart"], r["diffusion"], r["t"])


def test_one_ddim_step_equals_the_reference(reference, prediction):
    r = reference
    steps = [ddim_step(r["diffusion"], {k: v[b:b + 1] for k, v in prediction.items()}, r["x_t"][b:b + 1],
                       int(r["t"][b]), eta=0.0) for b in range(len(r["t"]))]
    torch.testing.assert_close(torch.cat(steps), r["out"]["ddim_step_eta0"], atol=1e-5, rtol=1e-5)


def test_the_classifier_sees_original_timesteps_under_respacing(reference):
    r = reference
    seen = []

    def spy(x, t):
        seen.append(t.tolist())
        return r["classifier"](x, t)

    sample(r["model"], r["diffusion"], r["x_t"][:2], y=r["y"][:2], guidance=ClassifierGuidance(spy, 1.0),
           sampler="ddim", steps="ddim4", progress=False)
    assert seen == [[750] * 2, [500] * 2, [250] * 2, [0] * 2]


def test_guidance_gradient_keeps_only_the_classifier_graph():
    diffusion = DiffusionConfig(steps=100, noise_schedule="cosine").build()
    mixture = GaussianMixture(torch.tensor([[0.5, 0.0], [-0.5, 0.0]]), std=0.1)
    oracle, oracle_classifier = MixtureDenoiser(mixture, diffusion), MixtureClassifier(mixture, diffusion)
    model_grad, classifier_grad = [], []

    def model(x, t):
        model_grad.append(torch.is_grad_enabled() or x.requires_grad)
        return oracle(x, t)

    def classifier(x, t):
        classifier_grad.append(x.requires_grad and torch.is_grad_enabled())
        return oracle_classifier(x, t)

    for sampler in ("ddpm", "ddim", "dpm-solver"):
        x = sample(model, diffusion, (4, 2), y=torch.tensor([0, 1, 0, 1]), guidance=ClassifierGuidance(classifier, 2.0),
                   sampler=sampler, steps="5", progress=False)
        assert x.grad_fn is None and not x.requires_grad
    assert model_grad and not any(model_grad)
    assert classifier_grad and all(classifier_grad)


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf"), "big"])
def test_bad_scales_are_refused(scale):
    with pytest.raises(ValueError, match="guidance scale"):
        ClassifierGuidance(lambda x, t: x, scale)
    with pytest.raises(ValueError, match="guidance scale"):
        ClassifierFreeGuidance(scale, null_label=10)
    assert check_scale(0) == 0.0 and check_scale(2) == 2.0


def test_guidance_errors_name_the_problem():
    diffusion = DiffusionConfig(steps=10, noise_schedule="cosine").build()
    mixture = GaussianMixture(torch.tensor([[0.5], [-0.5]]), std=0.1)
    model, classifier = MixtureDenoiser(mixture, diffusion), MixtureClassifier(mixture, diffusion)
    with pytest.raises(ValueError, match=r"label 2 is out of range \[0, 1\] for a classifier of 2 classes"):
        sample(model, diffusion, (2, 1), y=torch.tensor([0, 2]), guidance=ClassifierGuidance(classifier, 1.0),
               progress=False)
    with pytest.raises(ValueError, match="needs class labels"):
        sample(model, diffusion, (2, 1), guidance=ClassifierGuidance(classifier, 1.0), progress=False)
    with pytest.raises(ValueError, match="class-conditional model"):
        sample(model, diffusion, (2, 1), y=torch.tensor([0, 1]), guidance=ClassifierFreeGuidance(2.0, 2),
               progress=False)
    with pytest.raises(ValueError, match="one label per sample"):
        sample(model, diffusion, (2, 1), y=torch.tensor([0, 1, 1]), progress=False)
    with pytest.raises(TypeError, match="Guidance object"):
        sample(model, diffusion, (2, 1), guidance="classifier", progress=False)
    assert math.isfinite(sample(model, diffusion, (2, 1), progress=False).sum().item())
