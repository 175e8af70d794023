"""The guidance kinds beyond ADM through the commands: autoguidance (``--guide_model``), CADS (``--cads_noise``),
off-the-shelf classifiers (a clean ``--classifier``, or timm weights with ``--classifier_arch``) and training-free
guidance (``--guidance training-free``), declared once in the guidance option group and so present in ``gd sample``,
``gd sweep`` and the Python API, with what they cost in the cost line and the sweep's columns."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from classifiers.module import NoisyClassifierModule
from guided_diffusion.commands.cli import main as gd
from guided_diffusion.commands.sample import sample
from guided_diffusion.commands.sweep import sweep
from guided_diffusion.diffusion.schedules import space_timesteps
from guided_diffusion.guidance import GuidanceOptions
from guided_diffusion.training import DiffusionModule
from tests.test_generation import (CLASSIFIER, DIFFUSION, UNET, checkpoints, perturb, read,  # noqa: F401
                                   save_untrained)

COMMON = dict(num_samples=4, batch_size=4, steps="ddim4", accelerator="cpu", progress=False)
ARGS = ["--num_samples", "4", "--batch_size", "4", "--steps", "ddim4", "--accelerator", "cpu", "--progress", "false"]


@pytest.fixture(scope="module")
def frontier(tmp_path_factory, checkpoints):  # noqa: F811
    directory = tmp_path_factory.mktemp("frontier")
    torch.manual_seed(1)
    guide = DiffusionModule(network=UNET, diffusion=DIFFUSION, label_dropout=0.1)
    perturb(guide.ema.module, 0.05)
    clean = perturb(NoisyClassifierModule(network=CLASSIFIER, diffusion=DIFFUSION, noised=False), 0.2)
    other = DiffusionModule(network=UNET, diffusion=dataclasses.replace(DIFFUSION, predict_xstart=True))
    small = DiffusionModule(network=dataclasses.replace(UNET, image_size=8), diffusion=DIFFUSION)
    return dict(checkpoints, guide=save_untrained(guide, directory / "guide.ckpt"),
                clean=save_untrained(clean, directory / "clean.ckpt"),
                x0_model=save_untrained(other, directory / "x0.ckpt"),
                small=save_untrained(small, directory / "small.ckpt"))


def cost_of(capsys) -> str:
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cost:"))


def test_a_guide_equal_to_the_model_changes_no_image_and_its_evaluations_are_counted(frontier, tmp_path, capsys):
    gd(["sample", frontier["diffusion"], "--output", str(tmp_path / "plain"), *ARGS])
    capsys.readouterr()
    gd(["sample", frontier["diffusion"], "--output", str(tmp_path / "self"), "--guide_model", frontier["diffusion"],
        "--guide_scale", "3", *ARGS])
    assert "4 model, 4 guide-model and 0 classifier evaluations" in cost_of(capsys)
    assert np.array_equal(read(tmp_path / "plain" / "samples_4x16x16x3.npz")["arr_0"],
                          read(tmp_path / "self" / "samples_4x16x16x3.npz")["arr_0"])
    settings = json.loads((tmp_path / "self" / "run.json").read_text())
    assert settings["guidance_options"]["guide_scale"] == 3.0 and settings["guide_model"]
    plain = json.loads((tmp_path / "plain" / "run.json").read_text())
    assert "guide_model" not in plain and "guide_scale" not in plain["guidance_options"]  # old identities hold


def test_autoguidance_with_another_guide_and_classifier_guidance_from_python(frontier, tmp_path):
    base = sample(frontier["diffusion"], str(tmp_path / "cg"), classifier=frontier["classifier"], scale=3, **COMMON)
    both = sample(frontier["diffusion"], str(tmp_path / "both"), classifier=frontier["classifier"], scale=3,
                  guide_model=frontier["guide"], guide_scale=2.0, guide_interval="0,60", **COMMON)
    inside = sum(t <= 60 for t in space_timesteps(DIFFUSION.steps, "ddim4"))
    assert 0 < inside < 4 and both.cost.guide_model_evaluations == 4 * inside  # the guide runs inside its interval
    assert not np.array_equal(read(base.samples)["arr_0"], read(both.samples)["arr_0"])


def test_cads_from_the_command_line_and_off_when_gamma_is_one(frontier, tmp_path):
    gd(["sample", frontier["diffusion"], "--output", str(tmp_path / "plain"), *ARGS])
    gd(["sample", frontier["diffusion"], "--output", str(tmp_path / "off"), "--cads_noise", "0.5", "--cads_tau",
        "1,1", *ARGS])
    gd(["sample", frontier["diffusion"], "--output", str(tmp_path / "cads"), "--cads_noise", "2", "--cads_tau",
        "0,0.5", *ARGS])
    plain, off, cads = (read(tmp_path / name / "samples_4x16x16x3.npz")["arr_0"] for name in ("plain", "off", "cads"))
    assert np.array_equal(plain, off) and not np.array_equal(plain, cads)


def test_a_clean_classifier_guides_through_the_predicted_x0(frontier, tmp_path, capsys):
    result = sample(frontier["diffusion"], str(tmp_path / "clean"), classifier=frontier["clean"], scale=5, **COMMON)
    assert result.cost.classifier_evaluations == 4 * 4
    plain = sample(frontier["diffusion"], str(tmp_path / "plain"), **COMMON)
    assert not np.array_equal(read(result.samples)["arr_0"], read(plain.samples)["arr_0"])
    # the noise process of a clean classifier is not checked (it reads x_0), its images and classes are
    with pytest.raises(SystemExit) as exit_info:
        gd(["sample", frontier["diffusion"], "--output", str(tmp_path / "bad"), "--classifier", frontier["clean"],
            "--softplus_beta", "2", *ARGS], one_line_errors=True)
    assert exit_info.value.code == 2
    assert "softplus_beta smooths ReLU activations" in capsys.readouterr().err


def test_timm_weights_as_an_off_the_shelf_classifier(frontier, tmp_path):
    import timm

    network = timm.create_model("resnet10t", pretrained=False, num_classes=4, in_chans=3)
    torch.save(network.state_dict(), tmp_path / "resnet.pth")
    result = sample(frontier["diffusion"], str(tmp_path / "timm"), classifier=str(tmp_path / "resnet.pth"),
                    classifier_arch="resnet10t", scale=2, softplus_beta=3.0, **COMMON)
    assert result.cost.classifier_evaluations == 16
    assert json.loads((tmp_path / "timm" / "run.json").read_text())["classifier_arch"] == "resnet10t"


def test_training_free_guidance_differentiates_through_the_model(frontier, tmp_path, capsys):
    gd(["sample", frontier["diffusion"], "--output", str(tmp_path / "dps"), "--classifier", frontier["clean"],
        "--guidance", "training-free", "--tfg_rho", "0.5", "--tfg_recurrence", "2", *ARGS])
    line = cost_of(capsys)
    assert "8 model (8 with a backward pass)" in line and "8 classifier evaluations" in line, line
    plain = sample(frontier["diffusion"], str(tmp_path / "plain"), **COMMON)
    assert not np.array_equal(read(tmp_path / "dps" / "samples_4x16x16x3.npz")["arr_0"], read(plain.samples)["arr_0"])


@pytest.mark.parametrize("extra, message", [
    (["--guide_scale", "2"], "--guide_scale and --guide_interval shape autoguidance: give --guide_model FILE"),
    (["--guide_model", "{diffusion}"], "--guide_model needs its scale: --guide_scale W"),
    (["--guide_model", "{small}", "--guide_scale", "2"], "the guide model makes 3x8x8 images but the model 3x16x16"),
    (["--guide_model", "{x0_model}", "--guide_scale", "2"], "the guide model predicts x0 but the model eps"),
    (["--cads_psi", "0.5"], "--cads_tau and --cads_psi shape CADS: give --cads_noise S"),
    (["--cads_noise", "0.2", "--cads_tau", "0.9,0.5"], "--cads_tau '0.9,0.5': need 0 <= lo <= hi"),
    (["--tfg_rho", "1"], "--tfg_rho shapes training-free guidance: give --guidance training-free"),
    (["--guidance", "training-free", "--tfg_rho", "1"], "training-free guidance needs --classifier PATH"),
    (["--guidance", "training-free", "--classifier", "{clean}"], "training-free guidance needs --tfg_rho"),
    (["--guidance", "training-free", "--classifier", "{clean}", "--tfg_mu", "1", "--sampler", "dpm-solver",
      "--steps", "5"], "training-free guidance steps with ddim or ddpm"),
    (["--guidance", "training-free", "--classifier", "{clean}", "--tfg_mu", "1", "--scale", "3"],
     "training-free guidance is set by the --tfg_* options"),
    (["--margin_temperature", "2"], "shape classifier guidance: give --classifier PATH"),
    (["--classifier", "{classifier}", "--softplus_beta", "2"], "--softplus_beta smooths an off-the-shelf"),
    (["--classifier_arch", "resnet10t"], "--classifier_arch names the architecture of --classifier FILE"),
])
def test_bad_frontier_options_are_one_line(frontier, tmp_path, capsys, extra, message):
    argv = [part.format(**frontier) for part in extra]
    with pytest.raises(SystemExit) as exit_info:
        gd(["sample", frontier["diffusion"], "--output", str(tmp_path / "out"), *ARGS, *argv], one_line_errors=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and message in err[-1] and len(err) <= 2, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_every_frontier_option_is_one_field_taken_by_sample_sweep_and_demo():
    from guided_diffusion.commands import demo, sample as sample_command, sweep as sweep_command

    names = {field.name for field in dataclasses.fields(GuidanceOptions)}
    for option in ("guide_scale", "cads_noise", "margin_temperature", "tfg_rho", "tfg_recurrence"):
        assert option in names
        for module in (sample_command, sweep_command):
            assert f"--{option}" in module.COMMAND.parser().format_help()
    assert "--cads_noise" in demo.COMMAND.parser().format_help()


def test_sweep_counts_the_guide_model_and_puts_cost_on_the_front(frontier, tmp_path):
    reference = tmp_path / "reference.npz"
    np.savez(reference, arr_0=np.random.default_rng(0).integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8))
    sweep(frontier["diffusion"], str(reference), str(tmp_path / "sweep"), scales=[0.0, 3.0],
          classifier=frontier["classifier"], guide_model=frontier["guide"], guide_scale=2.0, num_samples=4,
          batch_size=4, steps=["ddim4"], features="mnist", accelerator="cpu", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep.csv")))
    assert [float(row["guide_model_evaluations"]) for row in rows] == [4.0, 4.0]
    assert [float(row["network_evaluations"]) for row in rows] == [8.0, 12.0]
