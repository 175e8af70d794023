"""``gd demo`` end to end with a few steps: trains from the ``gd fit`` configs, samples every scale,
scores, reports the background, resumes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from guided_diffusion.commands.demo import CONFIGS, DEMO_PRESETS, demo, frame_mean
from tests.helpers import rescore

QUICK = dict(diffusion_steps=4, classifier_steps=2, scales=[0.0, 2.0], default_scale=2.0, steps="ddim2",
             num_samples=20, batch_size=8, classifier_batch_size=8, wandb_mode="disabled", precision="32-true")


def test_frame_mean_reads_only_the_border():
    images = np.zeros((3, 32, 32, 1), dtype=np.uint8)
    images[:, 2:-2, 2:-2] = 255                                   # a bright centre: border still 0
    assert frame_mean(images) == 0.0
    images[:, 0, :] = 120                                         # one full edge row of 32 of 240 frame pixels
    assert frame_mean(images) == pytest.approx(120 * 32 / (32 * 32 - 28 * 28))


def test_demo_trains_samples_scores_and_reuses_its_work(tmp_path, capsys):
    options = dict(output=str(tmp_path), **QUICK)
    summary = demo(**options)
    assert [row["scale"] for row in summary["rows"]] == [0.0, 2.0] and summary["default_scale"] == 2.0
    # the guided row: autoguidance by the run's own step-2 checkpoint (0.4 of 4 steps), the classifier for t in
    # [400, 800] only
    alone, guided = summary["rows"]
    assert summary["guide_step"] == 2 and summary["guide_checkpoint"] == str(tmp_path / "guide.ckpt")
    guide = torch.load(tmp_path / "guide.ckpt", map_location="cpu", weights_only=True)
    assert guide["global_step"] == 2
    assert (alone["guide_scale"], alone["interval"], alone["guide_model_evaluations"]) == (None, "none", 0)
    assert (guided["guide_scale"], guided["interval"]) == (2.0, "400,800")
    # ddim2 is t = 0, 500: the classifier (t in [400, 800]) and the guide (t in [300, 1000]) at t = 500 only
    assert guided["guide_model_evaluations"] == 1 and guided["classifier_evaluations"] == 1
    assert summary["plan"]["budget_seconds"] is None and summary["plan"]["rates_from"] == "none"
    for row in summary["rows"]:
        samples = np.load(row["samples"])
        assert len(samples["arr_1"]) == 20 and np.bincount(samples["arr_1"]).tolist() == [2] * 10
        assert row["border"] == pytest.approx(frame_mean(samples["arr_0"]))
        expected = rescore(tmp_path / "mnist_reference.npz", row["samples"])  # the table is gd evaluate's
        assert row["fid"] == pytest.approx(expected["fid"], rel=1e-6)
        assert row["accuracy"] == pytest.approx(expected["accuracy"])
    width, height = Image.open(tmp_path / "grid.png").size
    assert (width - 2) % 34 == 0 and (height - 2) % 34 == 0 and width * height > 34 * 34   # 32-px digits + padding
    assert json.loads((tmp_path / "results.json").read_text())["grid_scale"] == 2.0
    for name in ("alone", "guided"):
        assert (tmp_path / "sweep" / name / "sweep.csv").exists() and (tmp_path / "sweep" / name / "sweep.png").exists()
    out = capsys.readouterr().out
    assert "accuracy" in out and "border" in out and "configs/mnist/diffusion.yaml" in out

    again = demo(**options)  # nothing to redo: same checkpoints and samples
    assert "reusing" in capsys.readouterr().out
    assert [row["fid"] for row in again["rows"]] == [row["fid"] for row in summary["rows"]]


def test_demo_trains_the_recipe_of_its_config(tmp_path):
    """The demo's recipe is the ``gd fit`` config's: a changed config changes what the demo trains, and
    an anneal over the config's whole run follows the demo's number of steps."""
    config = yaml.safe_load((CONFIGS / "classifier.yaml").read_text())
    config["model"]["init_args"]["lr"] = 1.234e-3
    config["trainer"]["max_steps"] = config["model"]["init_args"]["lr_anneal_steps"] = 77
    path = tmp_path / "classifier.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = demo(output=str(tmp_path / "demo"), classifier_config=str(path), **QUICK)
    checkpoint = torch.load(summary["classifier_checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["lr"] == 1.234e-3
    assert checkpoint["hyper_parameters"]["lr_anneal_steps"] == 2 and checkpoint["global_step"] == 2
    diffusion = torch.load(summary["diffusion_checkpoint"], map_location="cpu", weights_only=True)
    recipe = yaml.safe_load((CONFIGS / "diffusion.yaml").read_text())["model"]["init_args"]
    for key in ("lr", "timestep_sampler"):
        assert diffusion["hyper_parameters"][key] == recipe[key]
    for group in ("ema", "loss_weighting"):  # the fields the config sets, within each option group
        assert diffusion["hyper_parameters"][group] == {**diffusion["hyper_parameters"][group], **recipe[group]}


def test_demo_rejects_bad_input_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        demo(output=str(tmp_path), diffusion_config=str(tmp_path / "missing.yaml"), **QUICK)
    with pytest.raises(ValueError, match="preset"):
        demo(output=str(tmp_path), preset="huge", **QUICK)
    assert not any(Path(tmp_path).iterdir())
    assert set(DEMO_PRESETS) == {"default", "long"}


def test_the_demo_plans_by_its_budget_and_a_rerun_keeps_the_plan(tmp_path, monkeypatch, capsys):
    """Without given steps the demo measures the machine, plans its budget, trains what it planned, records the
    plan in plan.json and results.json, and a re-run of the same request reuses it (no new measurement)."""
    from guided_diffusion.commands import demo as demo_module
    from guided_diffusion.commands.demo_plan import Rates

    from guided_diffusion.commands.demo_plan import plan_demo

    rates = Rates(diffusion_step=1.0, classifier_step=1.0, model_forward=0.01, classifier_gradient=0.01, start=5.0)
    measured = []
    monkeypatch.setattr(demo_module, "measure_rates", lambda *args, **kwargs: measured.append(args) or rates)
    options = {key: value for key, value in QUICK.items() if key not in ("diffusion_steps", "classifier_steps")}
    request = demo_module.COMMAND.request(output=str(tmp_path), budget_minutes=2.6, **options)
    summary = demo(output=str(tmp_path), budget_minutes=2.6, **options)
    plan = summary["plan"]
    expected = plan_demo(156, rates.rounded(), request.sampled_rows(), machine=plan["machine"], measured=rates,
                         num_samples=20, guide_fraction=0.4)
    assert len(measured) == 1 and plan == expected.to_json() and plan["rates_from"] == "measured"
    assert 50 < plan["diffusion_steps"] < 100 and 20 < plan["classifier_steps"] < 50 and plan["guide_step"] >= 10
    for name in ("diffusion", "classifier"):  # it trained what it planned
        checkpoint = torch.load(tmp_path / f"{name}.ckpt", map_location="cpu", weights_only=True)
        assert checkpoint["global_step"] == plan[f"{name}_steps"]
    recorded = json.loads((tmp_path / "plan.json").read_text())["plan"]
    assert recorded == plan and json.loads((tmp_path / "results.json").read_text())["plan"] == plan
    assert "plan for 2.6 min on this machine" in capsys.readouterr().out
    again = demo(output=str(tmp_path), budget_minutes=2.6, **options)
    assert len(measured) == 1 and again["plan"] == plan and "recorded in plan.json" in capsys.readouterr().out


def test_the_demo_guidance_follows_the_preset_unless_given():
    from guided_diffusion.commands.demo import DemoOptions, DemoRequest
    from guided_diffusion.guidance import GuidanceOptions

    guided = DemoRequest().guided
    assert (guided.guide_scale, guided.guidance_interval, guided.guide_interval) == (2.0, "400,800", "300,1000")
    assert DemoRequest(guidance=GuidanceOptions(guide_interval="none")).guided.guide_interval is None
    assert DemoRequest(guidance=GuidanceOptions(guide_scale=1.0)).guided.guide_scale is None      # w = 1: the model
    assert DemoRequest(guidance=GuidanceOptions(guidance_interval="none")).guided.guidance_interval is None
    long = DemoRequest(DemoOptions(preset="long")).guided
    assert (long.guide_scale, long.guidance_interval) == (None, None)                               # ADM's guidance
    assert [scales for _, scales in DemoRequest().rows()] == [(0.0,), (12.0,)]
    with pytest.raises(ValueError, match="budget_minutes must be > 0"):
        DemoOptions(budget_minutes=0)
