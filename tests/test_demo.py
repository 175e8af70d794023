"""``gd demo`` end to end with a few steps: trains, samples a 10x10 grid per scale, scores, resumes."""
from __future__ import annotations

import json

from PIL import Image

from guided_diffusion.demo import demo


def test_demo_trains_samples_scores_and_reuses_its_work(tmp_path, capsys):
    options = dict(output=str(tmp_path), diffusion_steps=2, classifier_steps=2, scales=[0.0, 2.0], steps="ddim2",
                   batch_size=8, classifier_batch_size=8, wandb="disabled")
    summary = demo(**options)
    assert [row["scale"] for row in summary["rows"]] == [0.0, 2.0]
    for row in summary["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["fid"] > 0
    assert Image.open(tmp_path / "grid.png").size == (10 * 34 + 2, 10 * 34 + 2)  # 10x10 digits, 32 px + padding
    assert json.loads((tmp_path / "results.json").read_text())["grid_scale"] in (0.0, 2.0)
    assert (tmp_path / "sweep" / "sweep.csv").exists() and (tmp_path / "sweep" / "sweep.png").exists()
    assert "accuracy" in capsys.readouterr().out

    again = demo(**options)  # nothing to redo: same checkpoints and samples
    assert "reusing" in capsys.readouterr().out
    assert [row["fid"] for row in again["rows"]] == [row["fid"] for row in summary["rows"]]
