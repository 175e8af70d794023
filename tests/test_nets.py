"""Behaviour of the ADM networks: layers, configs, input checks, precision, checkpointing, presets."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from classifiers import EncoderUNet, EncoderUNetConfig
from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.nets import (
    GroupNorm32,
    QKVAttention,
    QKVAttentionLegacy,
    SuperResUNet,
    UNet,
    UNetConfig,
    timestep_embedding,
)
from guided_diffusion.presets import get_preset, list_presets
from tests.helpers import parity_fixture, reference_state_dict

TINY = dict(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
            num_head_channels=32, learn_sigma=True, resblock_updown=True, num_classes=5)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (incl. the zero-initialised output convs) small random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 10
            p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
    return model


def parity_model() -> UNet:
    from tests.test_nets_parity import CASES, build_case

    return build_case(CASES[0])


# ---------------------------------------------------------------------------------------------- layers


def test_timestep_embedding_layout():
    t = torch.tensor([0, 3, 999])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[:, :4], torch.cos(t[:, None] * freqs))  # [cos, sin] order
    torch.testing.assert_close(emb[:, 4:], torch.sin(t[:, None] * freqs))
    assert timestep_embedding(5, 8).shape == (1, 8)  # Python int
    torch.testing.assert_close(timestep_embedding(2.5, 8), timestep_embedding(torch.tensor([2.5]), 8))
    odd = timestep_embedding(t, 7)
    assert odd.shape == (3, 7) and torch.all(odd[:, -1] == 0)


def test_qkv_orderings_match_their_reference_definitions():
    batch, heads, d, tokens = 2, 3, 4, 5
    qkv = torch.randn(batch, tokens, 3 * heads * d)
    channels_first = qkv.transpose(1, 2)  # the reference's (B, 3*H*d, T) layout

    def reference(q, k, v):  # (B*H, d, T) each
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
        return torch.einsum("bts,bcs->bct", weight, v).reshape(batch, heads * d, tokens).transpose(1, 2)

    legacy_q, legacy_k, legacy_v = channels_first.reshape(batch * heads, 3 * d, tokens).split(d, dim=1)
    torch.testing.assert_close(QKVAttentionLegacy(heads)(qkv), reference(legacy_q, legacy_k, legacy_v))
    q, k, v = (x.reshape(batch * heads, d, tokens) for x in channels_first.chunk(3, dim=1))
    torch.testing.assert_close(QKVAttention(heads)(qkv), reference(q, k, v))
    assert not torch.allclose(QKVAttention(heads)(qkv), QKVAttentionLegacy(heads)(qkv))


@pytest.mark.parametrize("native_kernel", [True, False], ids=["cpu-kernel", "upcast"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_groupnorm_statistics_are_float32(dtype, native_kernel, monkeypatch):
    from guided_diffusion.nets import layers

    if not native_kernel:  # the path other devices take: upcast, normalise, cast back
        monkeypatch.setattr(layers, "_group_norm_accumulates_in_float32", lambda x: False)
    norm = GroupNorm32(4, 8)
    torch.nn.init.normal_(norm.weight)
    x = (200 + torch.randn(2, 8, 6, 6)).to(dtype)  # a large offset: reduced-precision statistics fail here
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == dtype
    xd = x.double().view(2, 4, -1)
    ref = (xd - xd.mean(-1, keepdim=True)) / torch.sqrt(xd.var(-1, unbiased=False, keepdim=True) + norm.eps)
    ref = ref.view(2, 8, 6, 6) * norm.weight.double()[:, None, None] + norm.bias.double()[:, None, None]
    tolerance = 2 * torch.finfo(dtype).eps * ref.abs().max()  # rounding of the output only
    assert (out.double() - ref).abs().max() <= tolerance


# ---------------------------------------------------------------------------------------------- config


def test_config_round_trips_through_asdict():
    for name in list_presets():
        config = get_preset(name).config
        rebuilt = type(config)(**dataclasses.asdict(config))
        assert rebuilt == config
    # YAML gives lists: normalised to tuples.
    config = UNetConfig(**{**TINY, "channel_mult": [1, 2], "attention_resolutions": [8]})
    assert config == UNetConfig(**TINY)


def test_config_defaults_and_validation():
    assert UNetConfig(image_size=256).resolved_channel_mult == (1, 1, 2, 2, 4, 4)
    assert UNetConfig(image_size=512).resolved_channel_mult == (0.5, 1, 1, 2, 2, 4, 4)
    assert UNetConfig(image_size=32).resolved_channel_mult == (1, 2, 2, 2)
    assert UNetConfig(**TINY).resolved_out_channels == 6
    assert UNetConfig(**{**TINY, "learn_sigma": False}).resolved_out_channels == 3
    with pytest.raises(ValueError, match="no default channel_mult for image_size=48"):
        UNetConfig(image_size=48)
    with pytest.raises(ValueError, match=r"attention_resolutions \[3\]"):
        UNetConfig(**{**TINY, "attention_resolutions": (3,)})
    with pytest.raises(ValueError, match="num_head_channels=48"):
        UNetConfig(**{**TINY, "num_head_channels": 48})
    with pytest.raises(ValueError, match="pool"):
        EncoderUNetConfig(image_size=32, pool="max")


def test_keyword_and_config_construction_agree():
    a, b = UNet(UNetConfig(**TINY)), UNet(**TINY)
    assert a.config == b.config
    assert UNet(UNetConfig(**TINY), dropout=0.2).config.dropout == 0.2
    assert UNet(dataclasses.asdict(UNetConfig(**TINY))).config == a.config


# ---------------------------------------------------------------------------------------------- inputs


def test_forward_shapes_and_input_errors():
    model = UNet(**TINY).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 999]), torch.tensor([0, 4])
    assert model(x, t, y).shape == (2, 6, 16, 16)
    assert model(x, 7, y).shape == (2, 6, 16, 16)  # scalar t broadcast
    with pytest.raises(ValueError, match=r"pass labels y"):
        model(x, t)
    with pytest.raises(ValueError, match=r"label 5 is out of range \[0, 4\]"):
        model(x, t, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"label -1 is out of range \[0, 4\]"):
        model(x, t, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        model(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 32\).*\(B, 3, 16, 16\)"):
        model(torch.randn(2, 3, 32, 32), t, y)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model(torch.randn(2, 1, 16, 16), t, y)
    with pytest.raises(ValueError, match=r"timesteps must have shape \(2,\)"):
        model(x, torch.tensor([1, 2, 3]), y)
    unconditional = UNet(**{**TINY, "num_classes": None})
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x, t, y)


def test_super_resolution_model():
    config = UNetConfig(**{**TINY, "low_res_size": 8})
    model = config.build().eval()
    assert isinstance(model, SuperResUNet)
    assert model.input_blocks[0][0].in_channels == 6  # x_t and the up-sampled low-res image
    x, t, y, low = torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1]), torch.randn(2, 3, 8, 8)
    assert model(x, t, y, low_res=low).shape == (2, 6, 16, 16)
    with pytest.raises(ValueError, match="low_res"):
        model(x, t, y)
    with pytest.raises(ValueError, match=r"low_res of shape \(2, 3, 4, 4\)"):
        model(x, t, y, low_res=torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="SuperResUNet"):
        UNet(config)
    # Conditioning really flows in: a different low-res image changes the output.
    randomize(model)
    with torch.no_grad():
        assert not torch.allclose(model(x, t, y, low_res=low), model(x, t, y, low_res=-low))


def test_classifier_heads():
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 4])
    for pool in ("adaptive", "attention", "spatial", "spatial_v2"):
        model = EncoderUNet(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(8,), num_head_channels=32, num_classes=7, pool=pool)
        assert model(x, t).shape == (2, 7), pool
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model(torch.randn(2, 3, 8, 8), t)


# ---------------------------------------------------------------------------------------------- precision


def test_bf16_autocast_forward_keeps_softmax_and_head_in_float32(monkeypatch):
    fixture = parity_fixture()
    model = parity_model()
    inputs = fixture["inputs"]
    x_t = fixture["cases"]["new_order_updown_learned_cosine"]["outputs"]["x_t"]
    with torch.no_grad():
        reference = model(x_t, inputs["t"], inputs["y"])

    seen = []
    original = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return original(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x_t, inputs["t"], inputs["y"])
    assert seen and all(s == (torch.float32, torch.float32, torch.float32, False) for s in seen)
    assert out.dtype == torch.float32  # output head in float32
    relative = (out - reference).norm() / reference.norm()
    assert relative < 2e-2
    mse = lambda o: (inputs["noise"] - o[:, :3]).pow(2).mean()  # noqa: E731
    assert abs(mse(out) - mse(reference)) / mse(reference) < 1e-2


def test_bf16_autocast_gradients_match_the_fp32_gradients():
    """bf16 autocast (8-bit mantissa, relative rounding 2^-8 = 0.4%) changes the gradient by rounding only: the
    whole gradient vector within 1% (relative L2) of fp32's, every tensor with a sizeable gradient within 5%
    (measured: 0.04% and at most 1.3%, 50 of 145 tensors compared)."""
    model = randomize(UNet(**TINY)).train()
    x, t, y = torch.randn(4, 3, 16, 16), torch.tensor([5, 500, 250, 999]), torch.tensor([1, 2, 0, 3])

    def gradients(autocast: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(x, t, y).float().pow(2).mean()
        loss.backward()
        return {name: p.grad.detach().float().clone() for name, p in model.named_parameters()}

    full, half = gradients(False), gradients(True)
    assert all(torch.isfinite(g).all() for g in half.values())
    flat = lambda grads: torch.cat([g.flatten() for g in grads.values()])  # noqa: E731
    assert (flat(half) - flat(full)).norm() / flat(full).norm() < 0.01
    for name in full:
        if full[name].norm() > 1e-3 * flat(full).norm():  # tensors with a gradient worth comparing
            assert (half[name] - full[name]).norm() / full[name].norm() < 0.05, name


# ---------------------------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize("network", ["unet", "classifier"])
def test_gradient_checkpointing_gives_identical_gradients(network):
    if network == "unet":
        config = UNetConfig(**{**TINY, "dropout": 0.2})
        inputs = (torch.randn(2, 3, 16, 16), torch.tensor([10, 900]), torch.tensor([0, 3]))
    else:
        config = EncoderUNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                   attention_resolutions=(8,), num_head_channels=32, num_classes=5, dropout=0.2)
        inputs = (torch.randn(2, 3, 16, 16), torch.tensor([10, 900]))
    plain = randomize(config.build()).train()
    checkpointed = dataclasses.replace(config, use_checkpoint=True).build().train()
    checkpointed.load_state_dict(plain.state_dict())

    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(123)  # same dropout masks; checkpointing must replay them on recompute
        model(*inputs).pow(2).mean().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- presets


def test_presets_api():
    names = list_presets()
    for required in ("64_cond", "128_cond", "256_cond", "256_uncond", "512_cond", "64_classifier",
                     "128_classifier", "256_classifier", "512_classifier", "64_256_upsampler",
                     "128_512_upsampler", "lsun_256", "adm_imagenet64", "cifar32_adm", "mnist32_adm",
                     "mnist32_classifier"):
        assert required in names
    with pytest.raises(KeyError, match="unknown preset 'nope'.*64_cond.*mnist32_adm"):
        get_preset("nope")
    preset = get_preset("64_cond")
    assert preset.diffusion == DiffusionConfig(steps=1000, noise_schedule="cosine", learn_sigma=True)
    assert preset.sampling.classifier == "64_classifier" and preset.checkpoint == "64x64_diffusion.pt"
    preset.config.model_channels = 1  # a copy: the registry is unchanged
    assert get_preset("64_cond").config.model_channels == 192
    assert set(list_presets(kind="superres_unet")) == {"64_256_upsampler", "128_512_upsampler",
                                                       "improved_upsample_64_256", "adm_upsampler_64_256",
                                                       "adm_upsampler_128_512"}


def test_small_presets_are_small_and_run():
    assert 10e6 < get_preset("cifar32_adm").num_parameters < 12e6
    assert 1e6 < get_preset("mnist32_adm").num_parameters < 3e6
    mnist, clf = get_preset("mnist32_adm").build().eval(), get_preset("mnist32_classifier").build().eval()
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([0, 999]), torch.tensor([3, 9])
    with torch.no_grad():
        assert mnist(x, t, y).shape == (2, 1, 32, 32)  # fixed variance: the x0 channel only
        assert clf(x, t).shape == (2, 10)


def test_fixture_weights_helper_is_deterministic():
    keys = parity_fixture()["classifier"]["keys"]
    a, b = reference_state_dict(keys), reference_state_dict(keys)
    assert all(torch.equal(a[k], b[k]) for k in keys)
    assert a["out.2.positional_embedding"].std().item() == pytest.approx(1 / math.sqrt(65), rel=0.2)
