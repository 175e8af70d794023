"""What every sampler shares, discrete (:mod:`guided_diffusion.sampling`) or continuous
(:mod:`guided_diffusion.sde`): the types of the one sampler signature, the starting noise with
per-sample generators, how a model is called, and the loop helpers.

    sampler(model, process, shape | x_T, *, y=None, guidance=None, generator=None, progress=True, **options)

A progressive sampler yields one dict per step (``"sample"``, ``"t"``, ...); :func:`last` takes the
final sample. Nothing here knows a noise schedule.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

#: One generator for the batch, or one per sample (so a sample's noise does not depend on its batch).
Generators = Optional[torch.Generator | Sequence[torch.Generator]]
ShapeOrNoise = Sequence[int] | torch.Tensor
#: SeedSequence streams of sample i: 0 draws its random class label (generation/plan.py), 1 its noise, 2 the
#: noise of the super-resolution stage of a cascade (``gd sample --upsampler``, ``gd upsample``).
LABEL_STREAM, NOISE_STREAM, UPSAMPLER_STREAM = 0, 1, 2


def randn(shape: Sequence[int], generator: Generators = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise; with a list of generators, row i comes from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def sample_seed(seed: int, index: int, stream: int = NOISE_STREAM) -> int:
    """The noise seed of sample ``index`` of a run seeded ``seed``: a function of the pair (and stream) alone."""
    state = np.random.SeedSequence([seed, index, stream]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> 1)


def sample_generators(seed: int, indices: Sequence[int], device: torch.device | str = "cpu",
                      stream: int = NOISE_STREAM) -> list[torch.Generator]:
    """One generator per sample, seeded by :func:`sample_seed`: sample i's noise does not depend on its batch,
    rank or run (``gd sample`` and the FID callback draw the same sample i)."""
    return [torch.Generator(device).manual_seed(sample_seed(seed, index, stream)) for index in indices]


def model_takes_labels(model: Callable) -> bool:
    """Class labels go to the model only if it says it is class-conditional (``num_classes``)."""
    return getattr(model, "num_classes", None) is not None


def model_device(model: Callable) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def steps_with_progress(indices: Sequence[int], progress: bool, desc: str) -> Iterator[int]:
    return iter(tqdm(indices, desc=desc, disable=not progress, leave=False))


def last(iterator: Iterator[dict]) -> torch.Tensor:
    """The final sample of a progressive sampler."""
    final = None
    for final in iterator:
        pass
    if final is None:
        raise ValueError("the sampler made no steps")
    return final["sample"]
