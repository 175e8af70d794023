"""The notebook runs headless, top to bottom, on a tiny freshly trained model."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is a test dependency (requirements-dev.txt)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "guided_sampling.ipynb"


def test_guided_sampling_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("GD_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("GD_NOTEBOOK_TRAIN_STEPS", "3")
    monkeypatch.setenv("GD_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("GD_NOTEBOOK_THREADS", "1")  # the suite runs in parallel workers
    monkeypatch.setenv("WANDB_MODE", "disabled")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.get("outputs", []))
    assert "recognised as the requested digit" in outputs and "correct in" in outputs
    assert (tmp_path / "demo" / "diffusion.ckpt").exists() and (tmp_path / "demo" / "classifier.ckpt").exists()
    assert os.environ["GD_NOTEBOOK_QUICK"] == "1"
