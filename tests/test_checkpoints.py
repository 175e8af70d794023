"""OpenAI checkpoint import/export and the project's self-describing network files."""
from __future__ import annotations

import os

import pytest
import torch

from guided_diffusion.checkpoints import (
    CheckpointMismatchError,
    export_openai_checkpoint,
    find_matching_presets,
    load_network,
    load_openai_checkpoint,
    read_network_metadata,
    save_network,
)
from guided_diffusion.atomic import atomic_torch_save as atomic_save
from guided_diffusion.nets import SuperResUNet, UNetConfig
from guided_diffusion.presets import get_preset
from tests.helpers import parity_fixture, reference_state_dict
from tests.test_nets import randomize


class Exploit:
    """Unpickling this object would create a directory: weights_only loading must never do it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def mnist_model():
    return randomize(get_preset("mnist32_adm").build()).eval()


def test_export_import_round_trip_is_identical(tmp_path, mnist_model):
    path = export_openai_checkpoint(mnist_model, tmp_path / "mnist.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == list(mnist_model.state_dict())  # plain state dict in the OpenAI layout
    loaded, preset = load_openai_checkpoint(path)  # preset detected from keys and shapes
    assert preset.name == "mnist32_adm" and preset.diffusion.predict_xstart and not preset.diffusion.learn_sigma
    for name, tensor in mnist_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([1, 2]), torch.tensor([3, 4])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x, t, y), mnist_model(x, t, y))
    assert sorted(os.listdir(tmp_path)) == ["mnist.pt"]  # no temporary files left


def test_wrong_preset_error_lists_keys_and_names_fitting_preset(tmp_path, mnist_model):
    path = export_openai_checkpoint(mnist_model, tmp_path / "mnist.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_openai_checkpoint(path, preset="cifar32_adm")
    message = str(info.value)
    assert "does not fit preset 'cifar32_adm'" in message
    assert "missing key(s): input_blocks.4.0.skip_connection.weight" in message
    assert "unexpected key(s): input_blocks.3.0.skip_connection.weight" in message
    assert "mis-shaped key(s): time_embed.0.weight (file (128, 32) vs network (256, 64))" in message
    assert "more)" in message  # long lists are truncated with a count
    assert "It fits preset 'mnist32_adm'" in message


def test_unknown_checkpoint_error_reports_differences_to_closest_preset(tmp_path, mnist_model):
    state = dict(mnist_model.state_dict())
    del state["out.2.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["out.0.weight"] = torch.zeros(7)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_openai_checkpoint(tmp_path / "odd.pt")
    message = str(info.value)
    assert "closest: 'mnist32_adm'" in message
    assert "1 missing key(s): out.2.bias" in message
    assert "1 unexpected key(s): extra.weight" in message
    assert "1 mis-shaped key(s): out.0.weight (file (7,) vs network (32,))" in message
    assert "No known preset fits it" in message


def test_parity_fixture_weights_fit_no_preset():
    keys = parity_fixture()["cases"]["legacy_order_conv_fixed_linear"]["keys"]
    assert find_matching_presets(reference_state_dict(keys)) == []


def test_weights_only_refuses_arbitrary_pickles(tmp_path):
    marker = tmp_path / "exploited"
    torch.save({"time_embed.0.weight": torch.zeros(2), "payload": Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing to load"):
        load_openai_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing to load"):
        load_network(tmp_path / "evil.pt")
    assert not marker.exists()


def test_non_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_openai_checkpoint(tmp_path / "list.pt")


def test_own_format_rebuilds_without_flags(tmp_path):
    for model in (get_preset("mnist32_classifier").build(),
                  SuperResUNet(UNetConfig(image_size=16, low_res_size=8, model_channels=32, channel_mult=(1, 2),
                                          num_res_blocks=1, attention_resolutions=(8,), learn_sigma=True))):
        model = randomize(model).eval()
        path = save_network(model, tmp_path / "net.pt", metadata={"preset": "x", "steps": 1000})
        rebuilt = load_network(path)
        assert type(rebuilt) is type(model) and rebuilt.config == model.config
        assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in model.state_dict().items())
        assert read_network_metadata(path) == {"preset": "x", "steps": 1000}


def test_own_format_only_builds_registered_networks(tmp_path, mnist_model):
    path = save_network(mnist_model, tmp_path / "net.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["kind"] == "unet" and payload["config"]["in_channels"] == 1

    torch.save({**payload, "kind": "os.system"}, tmp_path / "kind.pt")
    with pytest.raises(ValueError, match="unknown network kind 'os.system'"):
        load_network(tmp_path / "kind.pt")
    torch.save({**payload, "config": {**payload["config"], "use_magic": True}}, tmp_path / "field.pt")
    with pytest.raises(ValueError, match=r"unknown UNetConfig field\(s\) \['use_magic'\]"):
        load_network(tmp_path / "field.pt")
    torch.save(payload["state_dict"], tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="load_openai_checkpoint"):
        load_network(tmp_path / "plain.pt")
    state = dict(payload["state_dict"])
    state.pop("label_emb.weight")
    torch.save({**payload, "state_dict": state}, tmp_path / "short.pt")
    with pytest.raises(CheckpointMismatchError, match="missing key.*label_emb.weight"):
        load_network(tmp_path / "short.pt")


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path):
    path = atomic_save({"a": torch.ones(1)}, tmp_path / "x.pt")
    with pytest.raises(Exception):
        atomic_save({"a": lambda: None}, path)  # lambdas cannot be pickled
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(1))
    assert sorted(os.listdir(tmp_path)) == ["x.pt"]
