"""Input checks of the hot paths that never synchronise an accelerator with the host.

A Python ``if int(t.max()) >= T`` copies a value from the device every call, stalling the CUDA
stream once per sampling step and per training step. Here a check runs at once on CPU (where reading
a value costs nothing) and raises the usual one-line ``ValueError``; on an accelerator it is an
asynchronous device assertion (:func:`torch._assert_async`): no host sync, and an out-of-range
value still stops the run, at the next point the host waits for the device. Under
``torch.compile`` the checks are skipped (graph breaks would cost more than they protect).
"""
from __future__ import annotations

import torch

__all__ = ["check_index_range"]


def check_index_range(values: torch.Tensor, upper: int, what: str, context: str = "") -> None:
    """Every element of the integer tensor ``values`` must lie in ``[0, upper)``; ``what`` names one element
    in the error (e.g. ``"timestep"``, ``"label"``), ``context`` ends it (``" for a classifier of 10 classes"``)."""
    if values.numel() == 0 or torch.compiler.is_compiling():
        return
    inside = (values >= 0) & (values < upper)
    if values.device.type == "cpu":
        if not bool(inside.all()):
            raise ValueError(f"{what} {int(values[~inside][0])} is out of range [0, {upper - 1}]{context}")
        return
    torch._assert_async(inside.all(), f"{what} out of range [0, {upper - 1}]{context}")
