"""``gd sweep``: one row per guidance scale with the ADM metrics, a CSV, a plot and the best scale."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from guided_diffusion.commands.cli import main as gd
from guided_diffusion.commands.sweep import sweep
from tests.helpers import rescore, wandb_run
from tests.test_generation import checkpoints  # noqa: F401  (the tiny checkpoints fixture)


@pytest.fixture
def reference(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "reference.npz"
    np.savez(path, arr_0=images)
    return str(path)


def test_sweep_writes_csv_plot_and_best_scale(checkpoints, reference, tmp_path):  # noqa: F811
    summary = sweep(checkpoints["diffusion"], reference, str(tmp_path / "sweep"), scales=[0.0, 20.0],
                    classifier=checkpoints["classifier"], num_samples=8, batch_size=4, steps=["ddim2"],
                    features="mnist", accelerator="cpu", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep.csv")))
    assert [float(row["scale"]) for row in rows] == [0.0, 20.0]
    for row in rows:  # every number is what gd evaluate and the MNIST CNN say of that point's samples
        expected = rescore(reference, row["samples"])
        for metric in ("fid", "sfid", "precision", "recall", "accuracy"):
            assert float(row[metric]) == pytest.approx(expected[metric], rel=1e-6, abs=1e-9), metric
        assert np.isfinite(float(row["inception_score"]))
    assert rows[0]["fid"] != rows[1]["fid"]  # guidance changed the samples
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 10_000
    by_fid = min(summary["rows"], key=lambda row: rescore(reference, row["samples"])["fid"])
    assert summary["best_by_fid"]["scale"] == by_fid["scale"]  # the best point by an independent FID
    assert (tmp_path / "sweep" / "ddim-ddim2" / "scale-20" / "samples_8x16x16x3.npz").exists()


def test_sweep_rejects_bad_input_before_sampling(checkpoints, reference, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="finite and non-negative"):
        sweep(checkpoints["diffusion"], reference, str(tmp_path), scales=[1.0, -2.0])
    with pytest.raises(ValueError, match="too few"):
        sweep(checkpoints["diffusion"], reference, str(tmp_path), num_samples=2)
    with pytest.raises((FileNotFoundError, ValueError), match="missing.npz"):
        sweep(checkpoints["diffusion"], str(tmp_path / "missing.npz"), str(tmp_path))
    assert not (tmp_path / "ddim-ddim25").exists()


def test_the_cli_has_sweep_and_evaluate(capsys):
    for command in ("sweep", "evaluate", "sample"):
        with pytest.raises(SystemExit) as exit_info:
            gd([command, "--help"])
        assert exit_info.value.code == 0
    assert "--scales" in capsys.readouterr().out


def test_schedule_and_interval_are_sweep_dimensions_with_cost_and_a_pareto_front(checkpoints, reference,  # noqa: F811
                                                                                 tmp_path):
    sweep(checkpoints["diffusion"], reference, str(tmp_path / "sweep"), scales=[4.0],
          classifier=checkpoints["classifier"], num_samples=8, batch_size=4, steps=["ddim4"], features="mnist",
          schedules=["constant", "linear"], intervals=["none", "0,40"], accelerator="cpu", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep.csv")))
    assert [(row["schedule"], row["interval"]) for row in rows] == [
        ("constant", "none"), ("constant", "0,40"), ("linear", "none"), ("linear", "0,40")]
    evaluations = [float(row["classifier_evaluations"]) for row in rows]
    assert evaluations[0] == evaluations[2] == 4 and 0 < evaluations[1] == evaluations[3] < 4
    assert all(float(row["model_evaluations"]) == 4 and float(row["seconds_per_sample"]) > 0 for row in rows)
    assert all(float(row["network_evaluations"]) == 4 + float(row["classifier_evaluations"]) for row in rows)
    # the front: exactly the points no other point beats in FID, accuracy and cost together
    scored = [(float(row["fid"]), float(row["accuracy"]), float(row["network_evaluations"])) for row in rows]
    for row, (fid, accuracy, cost) in zip(rows, scored):
        dominated = any(f <= fid and a >= accuracy and c <= cost and (f, a, c) != (fid, accuracy, cost)
                        for f, a, c in scored)
        assert row["pareto"] == str(not dominated)
    assert any(row["pareto"] == "True" for row in rows)
    assert (tmp_path / "sweep" / "tradeoff.png").stat().st_size > 10_000
    assert (tmp_path / "sweep" / "ddim-ddim4" / "scale-4-linear-t-0-40" / "samples_8x16x16x3.npz").exists()
    with pytest.raises(ValueError, match=r"--schedules: expected values of constant, linear, cosine, got \['exp'\]"):
        sweep(checkpoints["diffusion"], reference, str(tmp_path / "bad"), classifier=checkpoints["classifier"],
              num_samples=8, schedules=["exp"])
    assert not (tmp_path / "bad").exists()


def test_a_sweep_logs_one_wandb_run_with_its_table_plots_and_artifact(checkpoints, reference, tmp_path):  # noqa: F811
    out = tmp_path / "sweep"
    summary = sweep(checkpoints["diffusion"], reference, str(out), scales=[0.0, 3.0],
                    classifier=checkpoints["classifier"], num_samples=8, batch_size=8, steps=["ddim2"],
                    features="mnist", accelerator="cpu", progress=False, wandb_project="gd-tests", log_artifacts=True)
    folder, = (out / "wandb").glob("offline-run-*")  # one run for the sweep (the points log none of their own)
    run = wandb_run(folder)
    assert run["config"]["scales"] == [0.0, 3.0] and run["config"]["features"] == "mnist"
    table = json.loads(next((folder / "files" / "media" / "table").glob("sweep_*.table.json")).read_text())
    scale, fid = table["columns"].index("scale"), table["columns"].index("fid")
    assert [(row[scale], row[fid]) for row in table["data"]] == [(row["scale"], row["fid"]) for row in summary["rows"]]
    assert {"fid", "scale", "classifier_evaluations"} <= run["history"]  # a chart point per sweep point
    assert len(list((folder / "files" / "media" / "images").glob("*.png"))) == 2  # sweep.png and tradeoff.png
    assert run["summary"]["best/fid"] == pytest.approx(summary["best_by_fid"]["fid"])
    (name, artifact), = [(name, a) for name, a in run["artifacts"].items() if a["type"] == "sweep"]
    assert artifact["files"] == ["sweep.csv", "sweep.json"]
    assert set(artifact["metadata"]["inputs"]) == {"checkpoint", "classifier", "reference"}
