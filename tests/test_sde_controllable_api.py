"""The one-call controllable-generation API (``inpaint`` / ``colorize`` / ``interpolate``) for eps models
with a GaussianDiffusion and for score models with an SDE: same results as the Guidance route,
known pixels kept, batch expansion, and clear errors."""
import pytest
import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.mixture import GaussianMixture, MixtureDenoiser
from guided_diffusion.nets import UNetConfig
from guided_diffusion.sampling import (
    ClassifierFreeGuidance,
    colorization,
    colorize,
    inpaint,
    Inpainting,
    sample,
)
from guided_diffusion.sde import VPSDE, mixture_score_model, pc_sample

MIXTURE = GaussianMixture(torch.tensor([[3.0, 0.0], [-0.3, 0.52], [-0.3, -0.52]]), std=0.1, weights=[0.5, 0.3, 0.2])
KNOWN = torch.tensor([[-0.3, 0.0]]).expand(400, 2)
MASK = torch.tensor([[1.0, 0.0]])


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("sampler, steps", [("ddim", "ddim20"), ("ddpm", "25"), ("pc", "20")])
def test_inpaint_equals_the_guidance_route_for_an_eps_model(sampler, steps):
    """``inpaint(model, diffusion, ...)`` is the sampler with ``Inpainting`` appended to the guidance, the
    same generators driving the sampler and the replacement noise."""
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, var_type="fixed_small")
    model = MixtureDenoiser(MIXTURE, diffusion)
    x = inpaint(model, diffusion, KNOWN[:50], MASK, sampler=sampler, steps=steps, generator=gens(50),
                progress=False, clip_denoised=False)
    g = gens(50)
    expected = sample(model, diffusion, (50, 2), sampler=sampler, steps=steps, generator=g, progress=False,
                      guidance=Inpainting(KNOWN[:50], MASK, diffusion, generator=g), clip_denoised=False)
    torch.testing.assert_close(x, expected)
    assert (x[:, 0] + 0.3).abs().max() < 1e-5  # the known coordinate is the observation


def test_inpaint_follows_the_conditional_and_expands_one_image():
    """One observation, ``num_samples`` draws: the unknown coordinate splits 0.6 / 0.4 between the two
    components compatible with x_0 = -0.3 (3 standard errors); per-sample generators make a sample
    independent of its batch."""
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, var_type="fixed_small")
    model = MixtureDenoiser(MIXTURE, diffusion)
    x = inpaint(model, diffusion, KNOWN[:1], MASK, num_samples=400, steps="ddim50", generator=gens(400),
                progress=False, clip_denoised=False)
    assert x.shape == (400, 2)
    up = (x[:, 1] > 0).double().mean().item()
    assert abs(up - 0.6) < 3 * (0.24 / 400) ** 0.5, up
    alone = inpaint(model, diffusion, KNOWN[:1], MASK, num_samples=3, steps="ddim50", generator=gens(3),
                    progress=False, clip_denoised=False)
    torch.testing.assert_close(alone, x[:3])
    steps = []
    final = inpaint(model, diffusion, KNOWN[:2], MASK, steps="ddim5", progress=False, callback=steps.append)
    assert len(steps) == 5 and steps[-1]["sample"].shape == (2, 2) and torch.equal(steps[-1]["sample"], final)


def test_inpaint_with_a_score_model_and_its_sde():
    sde = VPSDE()
    model = mixture_score_model(MIXTURE, sde)
    x = inpaint(model, None, KNOWN[:50], MASK, steps=50, generator=gens(50), progress=False)  # sde=None: model.sde
    g = gens(50)
    expected = pc_sample(model, sde, (50, 2), steps=50, generator=g, progress=False,
                         guidance=Inpainting(KNOWN[:50], MASK, sde, generator=g))
    torch.testing.assert_close(x, expected)
    for sampler in ("euler-maruyama", "reverse-diffusion", "annealed-langevin"):
        options = {"steps_per_level": 2, "eps": 0.05} if sampler == "annealed-langevin" else {"steps": 20}
        out = inpaint(model, sde, KNOWN[:8], MASK, sampler=sampler, progress=False, **options)
        assert out.shape == (8, 2) and torch.isfinite(out).all()
        assert (out[:, 0] + 0.3).abs().max() < 1e-4, sampler


def test_inpaint_and_colorize_images_with_a_unet():
    """Image-shaped: a (H, W) mask, a class-conditional UNet with classifier-free guidance before the
    inpainting; the known pixels are kept exactly, the colour output has the given grey (to float32
    round-off of its values: without clipping, the random network's samples reach ~1e3)."""
    torch.manual_seed(0)
    net = UNetConfig(image_size=8, in_channels=3, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                     attention_resolutions=(), num_classes=2, null_class=True).build().eval()
    torch.nn.init.normal_(net.out[-1].weight, std=0.05)  # the output conv starts at zero
    diffusion = GaussianDiffusion.from_schedule("cosine", 100)
    image = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1  # keep the left half
    y = torch.tensor([0, 1, 1])
    with torch.no_grad():
        x = inpaint(net, diffusion, image, mask, num_samples=3, y=y, steps="ddim5", progress=False,
                    guidance=ClassifierFreeGuidance(2.0, null_label=2), generator=torch.Generator().manual_seed(0))
        colour = colorize(net, diffusion, image, num_samples=2, y=y[:2], sampler="ddpm", steps="5", progress=False,
                          clip_denoised=False)
    assert x.shape == (3, 3, 8, 8) and torch.isfinite(x).all()
    torch.testing.assert_close(x[..., :4], image[..., :4].expand(3, -1, -1, -1), atol=1e-5, rtol=0)
    assert (x[..., 4:] - image[..., 4:]).abs().mean() > 0.1
    assert colour.shape == (2, 3, 8, 8)
    scale = float(colour.abs().max())
    torch.testing.assert_close(colour.mean(1), image.mean(1).expand(2, -1, -1), atol=1e-6 * scale + 1e-6, rtol=0)


def test_colorize_equals_the_guidance_route():
    means = torch.tensor([[0.2, -0.1, -0.1], [-0.2, 0.1, 0.1], [-0.9, -0.9, -0.9]])
    mixture = GaussianMixture(means, std=0.1, weights=[0.3, 0.2, 0.5])
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    model = MixtureDenoiser(mixture, diffusion)
    grey = torch.zeros(30, 1)
    x = colorize(model, diffusion, grey, steps="ddim20", generator=gens(30), progress=False, clip_denoised=False)
    g = gens(30)
    expected = sample(model, diffusion, (30, 3), steps="ddim20", generator=g, progress=False, clip_denoised=False,
                      guidance=colorization(grey, diffusion, generator=g))
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(x.mean(1, keepdim=True), grey, atol=1e-5, rtol=0)


def test_bad_controllable_api_input():
    diffusion = GaussianDiffusion.from_schedule("linear", 100)
    model = MixtureDenoiser(MIXTURE, diffusion)
    with pytest.raises(ValueError, match=r"the mask \(3,\) does not broadcast to the images \(4, 2\)"):
        inpaint(model, diffusion, KNOWN[:4], torch.ones(3))
    with pytest.raises(ValueError, match="x_known has batch 2: give one image"):
        inpaint(model, diffusion, KNOWN[:2], MASK, num_samples=3)
    with pytest.raises(ValueError, match="unknown SDE sampler 'ddim'"):
        inpaint(mixture_score_model(MIXTURE, VPSDE()), None, KNOWN[:2], MASK, sampler="ddim")
    with pytest.raises(ValueError, match="unknown sampler 'annealed'"):
        inpaint(model, diffusion, KNOWN[:2], MASK, sampler="annealed")
    with pytest.raises(ValueError, match="pass the model's diffusion"):
        inpaint(model, None, KNOWN[:2], MASK)
    with pytest.raises(ValueError, match="original .not respaced. diffusion"):
        inpaint(model, diffusion.respace("10"), KNOWN[:2], MASK)
    with pytest.raises(ValueError, match="grey must be"):
        colorize(model, diffusion, torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="noise .* must have the shape of x_known"):
        inpaint(model, diffusion, KNOWN[:2], MASK, noise=torch.zeros(3, 2))
