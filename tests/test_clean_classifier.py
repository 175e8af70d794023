"""Off-the-shelf classifier guidance (Ma et al. 2023): a classifier of clean images guides through the predicted
x_0, with the calibrated log-likelihood f_y / T - logsumexp(f / T_m) and optionally Softplus-smoothed ReLUs; a
project classifier trained with ``noised: false`` loads as clean; a plain timm classifier loads from a weights
file (never downloading)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from guided_diffusion.checkpoints import (
    LoadedNetwork,
    load_classifier,
    load_classifier_checkpoint,
    load_timm_classifier,
)
from guided_diffusion.diffusion import DiffusionConfig, GaussianDiffusion
from guided_diffusion.guidance.clean import CleanClassifier, off_the_shelf_guidance, smooth_relu
from guided_diffusion.nets import UNet, UNetConfig
from guided_diffusion.nets.encoder import EncoderUNetConfig
from guided_diffusion.sampling import ClassifierGuidance, sample

K, D = 3, 4  # classes and features of the tiny linear classifier


class Linear(nn.Module):
    """logits = W x + b on flattened images; remembers what it was called with."""

    def __init__(self, features: int = D, classes: int = K, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, features, generator=generator))
        self.bias = nn.Parameter(torch.randn(classes, generator=generator))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t=None):
        self.seen.append(x.detach().clone())
        return x.flatten(1) @ self.weight.T + self.bias


def relu_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, K))


def inputs(n: int = 5, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=generator), torch.randint(0, K, (n,), generator=generator)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------- the calibrated log p
@pytest.mark.parametrize("temperature, margin", [(2.0, 0.5), (1.0, 3.0), (0.7, 0.7 * 0.9)])
def test_margin_temperature_is_the_hand_computed_gradient(temperature, margin):
    """grad [W_y x / T - logsumexp(W x / T_m)] = W_y / T - sum_j softmax(l / T_m)_j W_j / T_m."""
    classifier = Linear()
    x, y = inputs()
    logits = classifier(x)
    weights = torch.softmax(logits.detach() / margin, dim=-1)
    expected = classifier.weight[y] / temperature - weights @ classifier.weight / margin
    t = torch.zeros(len(y), dtype=torch.long)
    got = ClassifierGuidance(classifier, 1.0, temperature=temperature,
                             margin_temperature=margin).grad_log_prob(x, t, y)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)
    # the two temperatures are not interchangeable
    swapped = ClassifierGuidance(classifier, 1.0, temperature=margin, margin_temperature=temperature)
    assert not torch.allclose(swapped.grad_log_prob(x, t, y), expected.detach(), rtol=1e-3, atol=1e-4)


def test_no_margin_temperature_is_the_tempered_softmax_bit_for_bit():
    classifier = Linear()
    x, y = inputs()
    t = torch.zeros(len(y), dtype=torch.long)
    x_in = x.clone().requires_grad_(True)
    old = torch.log_softmax(classifier(x_in).float() / 1.5, dim=-1)[torch.arange(len(y)), y]
    old_grad, = torch.autograd.grad(old.sum(), x_in)
    for margin in (None, 1.5):
        got = ClassifierGuidance(classifier, 1.0, temperature=1.5, margin_temperature=margin).grad_log_prob(x, t, y)
        assert torch.equal(got, old_grad), margin
    assert ClassifierGuidance(classifier).margin_temperature is None


@pytest.mark.parametrize("margin", [0, -1.0, float("inf"), float("nan"), True, "warm"])
def test_a_bad_margin_temperature_is_one_line(margin):
    with pytest.raises(ValueError, match="margin_temperature must be finite and > 0") as err:
        ClassifierGuidance(Linear(), 1.0, margin_temperature=margin)
    one_line(err)
    with pytest.raises(ValueError, match="margin_temperature must be finite and > 0"):
        off_the_shelf_guidance(Linear(), 1.0, margin_temperature=margin)


# -------------------------------------------------------------------------------------- the gradient point
@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return DiffusionConfig(steps=50, noise_schedule="cosine").build()


def eps_model(x, t, y=None):
    """A fixed non-trivial eps prediction."""
    return torch.tanh(x) * 0.5 + 0.01 * t.float()[:, None, None, None]


def hand_gradient(classifier, x0, y, temperature=1.0, margin=None):
    margin = temperature if margin is None else margin
    x0 = x0.detach().clone().requires_grad_(True)
    logits = classifier(x0)
    log_p = logits[torch.arange(len(y)), y] / temperature - torch.logsumexp(logits / margin, dim=-1)
    grad, = torch.autograd.grad(log_p.sum(), x0)
    return grad


@pytest.mark.parametrize("form", ["eps", "mean"])
def test_the_gradient_is_taken_at_the_predicted_x0(process, form):
    """eps - sqrt(1 - abar) s g and mu + s Sigma g with g = grad_{x0} log p_cal(y | x0) at x0 = x0_hat: autograd at
    x0_hat by hand, not at x_t."""
    classifier = Linear(features=4)
    x = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(3)) * 2
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    t = torch.full((6,), 30)
    out = process.p_mean_variance(eps_model, x, t, clip_denoised=True)
    guidance = off_the_shelf_guidance(classifier, 2.5, temperature=1.3, margin_temperature=0.8)
    assert guidance.gradient_at == "x0" and guidance.uses_x0 and isinstance(guidance.classifier, CleanClassifier)
    classifier.seen.clear()
    g = hand_gradient(classifier, out["pred_xstart"], y, 1.3, 0.8)
    assert torch.equal(classifier.seen[0], out["pred_xstart"])  # what the hand gradient saw
    classifier.seen.clear()
    if form == "eps":
        got = guidance.condition_eps(process, out, x, t, y)["eps"]
        abar = torch.as_tensor(process.alphas_cumprod[30], dtype=torch.float32)
        expected = out["eps"] - (1 - abar).sqrt() * 2.5 * g
    else:
        got = guidance.condition_mean(process, out, x, t, y)["mean"]
        expected = out["mean"].float() + out["variance"] * 2.5 * g
    assert torch.equal(classifier.seen[0], out["pred_xstart"])  # the classifier saw the (clipped) x0_hat only
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    at_x_t = hand_gradient(classifier, x, y, 1.3, 0.8)
    assert not torch.allclose(g, at_x_t, atol=1e-3)  # the test tells x0 from x_t apart


def test_gradient_at_x_t_is_refused_in_one_line():
    with pytest.raises(ValueError, match="gradient_at must be 'x0', got 'x_t'") as err:
        off_the_shelf_guidance(Linear(), 1.0, gradient_at="x_t")
    one_line(err)
    assert off_the_shelf_guidance(Linear(), 1.0, gradient_at="x0").gradient_at == "x0"


def test_other_classifier_guidance_options_pass_through():
    guidance = off_the_shelf_guidance(Linear(), 2.0, schedule="linear", interval=(0, 500), every=2)
    assert (guidance.schedule, guidance.every, guidance.interval.lo, guidance.interval.hi) == ("linear", 2, 0, 500)
    clean = CleanClassifier(relu_net(), softplus_beta=3.0)
    assert off_the_shelf_guidance(clean, 1.0).classifier is clean
    with pytest.raises(ValueError, match="already a CleanClassifier") as err:
        off_the_shelf_guidance(clean, 1.0, softplus_beta=2.0)
    one_line(err)


def test_preprocess_maps_the_images_before_the_classifier_and_the_gradient_flows_through_it():
    """g = grad_{x0} log p(y | P(x0)): the chain rule through the preprocessing (here P(x) = (x + 1) / 2 * 3)."""
    classifier = Linear()
    x, y = inputs()
    t = torch.zeros(len(y), dtype=torch.long)
    preprocess = lambda images: (images + 1) / 2 * 3  # noqa: E731
    guidance = off_the_shelf_guidance(classifier, 1.0, preprocess=preprocess)
    classifier.seen.clear()
    got = guidance.grad_log_prob(None, t, y, x0=x)
    torch.testing.assert_close(classifier.seen[0], preprocess(x))
    torch.testing.assert_close(got, 1.5 * hand_gradient(classifier, preprocess(x), y), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="preprocess must be callable"):
        CleanClassifier(classifier, preprocess="imagenet")


# ------------------------------------------------------------------------------------------- softplus
def test_softplus_replaces_every_relu_in_a_copy():
    net = relu_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    clean = CleanClassifier(net, softplus_beta=4.0)
    assert clean.replaced == 2 and clean.softplus_beta == 4.0
    assert [type(m) for m in net if isinstance(m, (nn.ReLU, nn.Softplus))] == [nn.ReLU, nn.ReLU]  # untouched
    smoothed = [m for m in clean.network.modules() if isinstance(m, nn.Softplus)]
    assert len(smoothed) == 2 and all(m.beta == 4.0 for m in smoothed)
    assert not any(isinstance(m, nn.ReLU) for m in clean.network.modules())
    assert clean.network[1].weight is not net[1].weight  # a deep copy: same values, own tensors
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(net.state_dict()[k], v) for k, v in clean.network.state_dict().items())


def test_a_relu_used_twice_becomes_one_softplus_and_the_root_can_be_a_relu():
    shared = nn.ReLU()
    net = nn.Sequential(nn.Linear(D, D), shared, nn.Linear(D, D), shared)
    smoothed, replaced = smooth_relu(net, 2.0)
    assert replaced == 1 and smoothed[1] is smoothed[3] and isinstance(smoothed[1], nn.Softplus)
    root, replaced = smooth_relu(nn.ReLU(), 2.0)
    assert isinstance(root, nn.Softplus) and replaced == 1


def test_large_beta_is_close_to_relu_and_small_beta_changes_the_gradient():
    net = relu_net()
    x, y = inputs(16)
    t = torch.zeros(16, dtype=torch.long)
    with torch.no_grad():
        plain = net(x)
        sharp = CleanClassifier(net, softplus_beta=1e4)(x)
    torch.testing.assert_close(sharp, plain, atol=1e-3, rtol=0)  # |Softplus_beta - ReLU| <= log 2 / beta
    relu_grad = off_the_shelf_guidance(net, 1.0).grad_log_prob(None, t, y, x0=x)
    sharp_grad = off_the_shelf_guidance(net, 1.0, softplus_beta=1e4).grad_log_prob(None, t, y, x0=x)
    soft_grad = off_the_shelf_guidance(net, 1.0, softplus_beta=1.0).grad_log_prob(None, t, y, x0=x)
    torch.testing.assert_close(sharp_grad, relu_grad, atol=1e-3, rtol=1e-3)
    assert (soft_grad - relu_grad).abs().max() > 1e-2
    expected = hand_gradient(CleanClassifier(net, softplus_beta=1.0), x, y)
    torch.testing.assert_close(soft_grad, expected, rtol=1e-5, atol=1e-6)


def test_softplus_on_a_network_without_relu_is_one_line():
    silu = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, K))
    with pytest.raises(ValueError, match="softplus_beta smooths ReLU activations; this classifier .* has none") as err:
        CleanClassifier(silu, softplus_beta=2.0)
    one_line(err)
    for beta in (0, -2.0, float("inf"), True):
        with pytest.raises(ValueError, match="softplus_beta must be finite and > 0"):
            CleanClassifier(relu_net(), softplus_beta=beta)
    with pytest.raises(ValueError, match="must be an nn.Module"):
        CleanClassifier(lambda x: x, softplus_beta=2.0)


# ----------------------------------------------------------------------------------- project checkpoints
TINY_CLASSIFIER = EncoderUNetConfig(image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2),
                                    num_res_blocks=1, attention_resolutions=(), num_classes=3)


def save_classifier_checkpoint(path, noised: bool) -> str:
    """A Lightning checkpoint of a NoisyClassifierModule as training writes it (no training)."""
    import lightning as L

    from classifiers.module import NoisyClassifierModule

    torch.manual_seed(0)
    module = NoisyClassifierModule(network=TINY_CLASSIFIER, diffusion=DiffusionConfig(steps=50), noised=noised)
    with torch.no_grad():  # untrained encoder-UNets output zeros (zero-initialised head)
        for p in module.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=path.parent)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return str(path)


def test_a_classifier_trained_on_clean_images_loads_as_clean(tmp_path):
    clean_path = save_classifier_checkpoint(tmp_path / "clean.ckpt", noised=False)
    noisy_path = save_classifier_checkpoint(tmp_path / "noisy.ckpt", noised=True)
    clean, noisy = load_classifier(clean_path), load_classifier(noisy_path)
    assert isinstance(clean, LoadedNetwork) and clean.clean and "clean images" in clean.source
    assert not noisy.clean and "clean" not in noisy.source
    assert load_classifier_checkpoint(clean_path)[2]["clean"] is True
    assert load_classifier_checkpoint(noisy_path)[2]["clean"] is False
    # a checkpoint from before the option (no `noised` hyper-parameter) was noise-aware
    checkpoint = torch.load(noisy_path, weights_only=True)
    del checkpoint["hyper_parameters"]["noised"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    assert not load_classifier(tmp_path / "old.ckpt").clean
    # the project network takes (x, t): the adapter calls it at t = 0, whatever t the guidance passes
    adapter = CleanClassifier(clean.network)
    assert adapter.takes_time and adapter.num_classes == 3
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        at_zero = clean.network(x, torch.zeros(2, dtype=torch.long))
        torch.testing.assert_close(adapter(x, torch.tensor([7, 40])), at_zero)
    with pytest.raises(ValueError, match="has none"):  # the encoder-UNet is a SiLU network
        CleanClassifier(clean.network, softplus_beta=5.0)


# ----------------------------------------------------------------------------------------- timm weights
TIMM_ARCH = "resnet10t"


@pytest.fixture(scope="module")
def timm_model():
    import timm

    torch.manual_seed(0)
    return timm.create_model(TIMM_ARCH, pretrained=False, num_classes=10, in_chans=1).eval()


def test_timm_classifier_round_trip_never_downloads(tmp_path, timm_model, monkeypatch):
    import timm.models._builder as builder
    from safetensors.torch import save_file

    def no_download(*args, **kwargs):
        raise AssertionError("pretrained weights requested")

    monkeypatch.setattr(builder, "load_pretrained", no_download)
    state = timm_model.state_dict()
    torch.save(state, tmp_path / "w.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = timm_model(x)
        for name in ("w.pth", "wrapped.pt", "w.safetensors"):
            loaded = load_timm_classifier(tmp_path / name, TIMM_ARCH, num_classes=10, in_chans=1)
            assert not loaded.training
            torch.testing.assert_close(loaded(x), expected, msg=name)
    clean = CleanClassifier(loaded, softplus_beta=10.0)
    assert not clean.takes_time and clean.replaced >= 5
    assert not any(isinstance(m, nn.ReLU) for m in clean.network.modules())
    assert any(isinstance(m, nn.ReLU) for m in loaded.modules())


def test_timm_bad_inputs_are_one_line(tmp_path, timm_model):
    import timm

    torch.save(timm_model.state_dict(), tmp_path / "w.pth")
    cases = [
        (dict(arch="resnet_does_not_exist"), "unknown timm model 'resnet_does_not_exist'"),
        (dict(arch="hf-hub:timm/resnet18.a1_in1k"), "hub names are not allowed"),
        (dict(num_classes=5), r"do not fit timm model 'resnet10t' \(num_classes=5, in_chans=1\): 2 mis-shaped: "
                              r"fc.weight \(file \(10, 512\) vs model \(5, 512\)\)"),
        (dict(in_chans=3), "mis-shaped: conv1.0.weight"),
        (dict(arch="resnet18"), "missing: .*unexpected: .*mis-shaped"),
        (dict(num_classes=0), "num_classes must be a positive integer"),
        (dict(model_kwargs={"pretrained": True}), "nothing is downloaded"),
    ]
    for changes, message in cases:
        arguments = {**dict(path=tmp_path / "w.pth", arch=TIMM_ARCH, num_classes=10, in_chans=1), **changes}
        with pytest.raises(ValueError, match=message) as err:
            load_timm_classifier(**arguments)
        one_line(err)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "text.pth").write_text("hello")
    for name, message in (("list.pt", "not a state dict"), ("junk.safetensors", "not a readable safetensors file"),
                          ("text.pth", "not a PyTorch file")):
        with pytest.raises(ValueError, match=message) as err:
            load_timm_classifier(tmp_path / name, TIMM_ARCH, 10, 1)
        one_line(err)
    with pytest.raises(FileNotFoundError):
        load_timm_classifier(tmp_path / "missing.safetensors", TIMM_ARCH, 10, 1)
    assert timm.is_model(TIMM_ARCH)


# ----------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    config = UNetConfig(image_size=8, in_channels=1, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                        attention_resolutions=(), num_head_channels=32)
    model = UNet(config).eval()
    with torch.no_grad():  # an untrained UNet predicts zeros (zero-initialised output): make it say something
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    return model


def tiny_clean_classifier() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, K))


@pytest.mark.parametrize("sampler, steps", [("ddim", "ddim4"), ("ddpm", "4"), ("dpm-solver", 3),
                                            ("euler-maruyama", 4)])
def test_sampling_end_to_end_and_scale_zero_is_unguided(tiny_unet, process, sampler, steps):
    y = torch.tensor([0, 1, 2, 1])

    def draw(guidance):
        return sample(tiny_unet, process, (4, 1, 8, 8), sampler=sampler, steps=steps, y=y, guidance=guidance,
                      generator=torch.Generator().manual_seed(0), progress=False)

    unguided = draw(None)
    classifier = tiny_clean_classifier()
    calls = []
    classifier.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    assert torch.equal(draw(off_the_shelf_guidance(classifier, 0.0, softplus_beta=2.0)), unguided)
    guided = draw(off_the_shelf_guidance(classifier, 5.0, temperature=2.0, margin_temperature=1.0))
    assert torch.isfinite(guided).all() and not torch.equal(guided, unguided)
    assert calls and all(shape == (4, 1, 8, 8) for shape in calls)
    smoothed = draw(off_the_shelf_guidance(classifier, 5.0, softplus_beta=2.0))
    assert torch.isfinite(smoothed).all() and not torch.equal(smoothed, guided)
