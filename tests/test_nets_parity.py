"""Numerical parity with OpenAI guided-diffusion and key-for-key layout of every released checkpoint."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from classifiers import EncoderUNet, EncoderUNetConfig
from guided_diffusion.nets import UNet
from guided_diffusion.presets import get_preset
from guided_diffusion.presets import config_from_openai_flags
from tests.helpers import openai_key_configs, openai_key_list, parity_fixture, reference_state_dict

CASES = ("new_order_updown_learned_cosine", "legacy_order_conv_fixed_linear")
KIND_OF_CLASS = {"UNetModel": "unet", "SuperResModel": "superres_unet", "EncoderUNetModel": "encoder_unet"}


def build_case(name: str) -> UNet:
    case = parity_fixture()["cases"][name]
    _, config, _ = config_from_openai_flags(case["flags"], num_classes=case["num_classes"])
    model = config.build().eval()
    model.load_state_dict(reference_state_dict(case["keys"]))
    return model


def build_classifier() -> EncoderUNet:
    clf = parity_fixture()["classifier"]
    kwargs = dict(clf["kwargs"])
    # The fixture gives the reference constructor's arguments: attention at down-sampling factors.
    config = EncoderUNetConfig(
        image_size=kwargs["image_size"], in_channels=kwargs["in_channels"],
        model_channels=kwargs["model_channels"], num_classes=kwargs["out_channels"],
        num_res_blocks=kwargs["num_res_blocks"],
        attention_resolutions=tuple(kwargs["image_size"] // ds for ds in kwargs["attention_resolutions"]),
        channel_mult=kwargs["channel_mult"], num_head_channels=kwargs["num_head_channels"],
        use_scale_shift_norm=kwargs["use_scale_shift_norm"], resblock_updown=kwargs["resblock_updown"],
        pool=kwargs["pool"])
    model = EncoderUNet(config).eval()
    model.load_state_dict(reference_state_dict(clf["keys"]))
    return model


def assert_close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", CASES)
def test_state_dict_layout_matches_reference(name):
    case = parity_fixture()["cases"][name]
    model = build_case(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(s) for k, s in case["keys"].items()}


@pytest.mark.parametrize("name", CASES)
def test_unet_output_matches_reference(name):
    fixture = parity_fixture()
    inputs, case = fixture["inputs"], fixture["cases"][name]
    model = build_case(name)
    y = inputs["y"] if model.config.num_classes else None
    with torch.no_grad():
        # The fixture's ``model_out`` is the network evaluated on x0 (checked below for x_t via mse).
        assert_close(model(inputs["x0"], inputs["t"], y), case["outputs"]["model_out"])
        out = model(case["outputs"]["x_t"], inputs["t"], y)
    mse = (inputs["noise"] - out[:, :3]).pow(2).mean(dim=(1, 2, 3))
    assert_close(mse, case["outputs"]["training_losses"]["mse"])


def test_classifier_logits_match_reference():
    fixture = parity_fixture()
    clf = fixture["classifier"]
    x_t = fixture["cases"][clf["guided_case"]]["outputs"]["x_t"]
    with torch.no_grad():
        logits = build_classifier()(x_t, fixture["inputs"]["t"])
    assert logits.shape == (4, 10)
    assert_close(logits, clf["outputs"]["clf_logits"])


def test_attention_orders_differ_with_identical_weights():
    fixture = parity_fixture()
    inputs = fixture["inputs"]
    new_order = build_case(CASES[0])
    legacy = UNet(dataclasses.replace(new_order.config, use_new_attention_order=False)).eval()
    legacy.load_state_dict(new_order.state_dict())
    with torch.no_grad():
        out_new = new_order(inputs["x0"], inputs["t"], inputs["y"])
        out_legacy = legacy(inputs["x0"], inputs["t"], inputs["y"])
    assert (out_new - out_legacy).abs().max() > 1e-3
    assert_close(out_new, fixture["cases"][CASES[0]]["outputs"]["model_out"])


@pytest.mark.parametrize("config_name", openai_key_configs())
def test_released_preset_matches_openai_keys(config_name):
    header, expected = openai_key_list(config_name)
    preset = get_preset(config_name)
    assert preset.kind == KIND_OF_CLASS[header["class"]]
    with torch.device("meta"):
        model = preset.build()
    actual = {k: (tuple(v.shape), v.numel()) for k, v in model.state_dict().items()}
    assert list(actual) == list(expected)  # same keys, same order
    assert actual == expected
    assert len(actual) == int(header["tensors"])
    assert sum(n for _, n in actual.values()) == int(header["elements"])
    # The header's reference flags translate to the same architecture.
    _, config, diffusion = config_from_openai_flags(header["flags"], kind=preset.kind)
    assert config == preset.config
    assert (diffusion.steps, diffusion.learn_sigma) == (preset.diffusion.steps, preset.diffusion.learn_sigma)
