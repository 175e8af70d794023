"""Test-session settings shared by every test module.

The suite runs with pytest-xdist, one worker per core (``make test``), so each worker computes on
one thread: more threads per worker only oversubscribe the cores, which slows the many small
tensor operations of the oracle tests by an order of magnitude.
"""
import os
import tempfile

import lightning.pytorch  # noqa: F401  (its log handler binds sys.stderr at import: the real one, not a test's capture)
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# cached reference features (gd evaluate / gd sweep) go to a fresh directory per session, not ~/.cache
os.environ.setdefault("GD_CACHE_DIR", tempfile.mkdtemp(prefix="gd-cache-"))
torch.set_num_threads(1)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh directory (outputs of configs land under it) with W&B offline, writing into it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path
