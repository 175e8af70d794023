"""What every sampler shares, discrete (:mod:`guided_diffusion.sampling`) or continuous
(:mod:`guided_diffusion.sde`): the types of the one sampler signature, how a model is called, and the loop helpers.

    sampler(model, process, shape | x_T, *, y=None, guidance=None, generator=None, progress=True,
            callback=None, **options) -> Tensor

A sampler returns the final sample; a ``callback`` (:data:`StepCallback`) sees every step on the way. The noise
(``generator``: per-sample streams) is :mod:`guided_diffusion.noise`. Nothing here knows a noise schedule.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

ShapeOrNoise = Sequence[int] | torch.Tensor
#: Called by a sampler after each of its steps with a dict holding at least ``"i"`` (the step's number, 0 for the
#: first), ``"t"`` (the time the step started from: an original timestep for the discrete samplers, continuous
#: time in [0, 1] for the score samplers), ``"sample"`` (the state after the step; after the last step, the
#: sampler's result) and ``"pred_xstart"`` (the step's estimate of x_0); ``None``: no callback.
StepCallback = Optional[Callable[[dict], None]]


def model_takes_labels(model: Callable) -> bool:
    """Class labels go to the model only if it says it is class-conditional (``num_classes``)."""
    return getattr(model, "num_classes", None) is not None


def model_device(model: Callable) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def check_labels(y, x: torch.Tensor) -> Optional[torch.Tensor]:
    """Class labels as a tensor on the device of the batch ``x``, one per sample (``None`` stays ``None``)."""
    if y is None:
        return None
    y = torch.as_tensor(y, device=x.device)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must hold one label per sample: shape {tuple(y.shape)} for a batch of {x.shape[0]}")
    return y


def steps_with_progress(indices: Sequence[int], progress: bool, desc: str) -> Iterator[int]:
    return iter(tqdm(indices, desc=desc, disable=not progress, leave=False))
