"""Per-sample noise streams: the noise of sample i of a run is a function of (seed, i) alone, whatever its batch,
rank or run.

- :func:`sample_seed`: the 64-bit seed of sample i, from ``numpy.random.SeedSequence([seed, i, stream])``;
- :func:`sample_generators`: one ``torch.Generator`` per sample (a loop over the batch);
- :class:`PhiloxStreams`: one counter-based Philox-4x32-10 stream per sample (:mod:`.philox`), drawn for the
  whole batch in one vectorised computation on the device;
- :func:`randn`: standard normal noise from any of these, row i from sample i's stream.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import numpy as np
import torch

from . import philox


class PhiloxStreams:
    """One Philox stream per sample, drawn for the whole batch at once: draw d of sample i is
    Philox-4x32-10 of the counters (block, d, 0, 0) under the key ``seeds[i]``, a function of (seed, d)
    alone as with one ``torch.Generator`` per sample, but one vectorised computation on the device (no
    loop of B small ``randn`` calls, no host sync). Every :func:`randn` call is one draw of every stream.

    Args:
        seeds: the 64-bit seed of each sample's stream (:func:`sample_seed`).
        device: where the keys live and the noise is made.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.keys = philox.key_words(list(seeds), device)
        self.draws = 0

    def __len__(self) -> int:
        return len(self.keys)

    def _next_draw(self) -> int:
        self.draws += 1
        return self.draws - 1

    def randn(self, shape: Sequence[int], dtype=torch.float32) -> torch.Tensor:
        count = math.prod(shape[1:])
        return philox.normal(self.keys, self._next_draw(), count).reshape(tuple(shape)).to(dtype)

    def randint(self, high: int) -> torch.Tensor:
        return philox.below(self.keys, self._next_draw(), high)


#: One generator for the batch, or one per sample (generators or Philox streams: a sample's noise does not
#: depend on its batch).
Generators = Optional[torch.Generator | Sequence[torch.Generator] | PhiloxStreams]
#: How per-sample noise is drawn: ``generators`` (one ``torch.Generator`` per sample, a loop over the batch),
#: ``philox`` (:class:`PhiloxStreams`, vectorised), ``auto`` (``philox`` on accelerators, ``generators`` on
#: CPU, where the loop is cheap).
NoiseKind = Literal["auto", "generators", "philox"]
NOISE_KINDS = ("auto", "generators", "philox")
#: SeedSequence streams of sample i: 0 draws its random class label (generation/plan.py), 1 its noise, 2 the
#: noise of the super-resolution stage of a cascade (``gd sample --upsampler``, ``gd upsample``).
LABEL_STREAM, NOISE_STREAM, UPSAMPLER_STREAM = 0, 1, 2


def randn(shape: Sequence[int], generator: Generators = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise; with a list of generators, row i comes from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    if isinstance(generator, PhiloxStreams):
        return generator.randn(shape, dtype).to(device)
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


def resolve_noise(kind: NoiseKind, device: torch.device | str) -> str:
    """``generators`` or ``philox`` for ``kind`` on ``device``."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    if kind == "auto":
        return "generators" if torch.device(device).type == "cpu" else "philox"
    return kind


def sample_noise(seed: int, indices: Sequence[int], device: torch.device | str = "cpu",
                 stream: int = NOISE_STREAM, kind: NoiseKind = "auto") -> list[torch.Generator] | PhiloxStreams:
    """The per-sample noise of samples ``indices`` of a run seeded ``seed``: :func:`sample_generators` or
    :class:`PhiloxStreams` over the same :func:`sample_seed` seeds (``kind``: :data:`NoiseKind`)."""
    if resolve_noise(kind, device) == "philox":
        return PhiloxStreams([sample_seed(seed, index, stream) for index in indices], device)
    return sample_generators(seed, indices, device, stream)


__all__ = ["PhiloxStreams", "Generators", "NoiseKind", "NOISE_KINDS", "LABEL_STREAM", "NOISE_STREAM",
           "UPSAMPLER_STREAM", "randn", "sample_seed", "sample_generators", "resolve_noise", "sample_noise"]
