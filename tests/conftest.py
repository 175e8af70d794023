"""Test-session settings shared by every test module.

The suite runs with pytest-xdist, one worker per core (``make test``), so each worker computes on
one thread: more threads per worker only oversubscribe the cores, which slows the many small
tensor operations of the oracle tests by an order of magnitude.
"""
import os

import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)
