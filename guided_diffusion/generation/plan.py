"""What a sampling run produces, independent of how it is batched and how many processes produce it.

Everything about sample i is a function of ``(seed, i)`` alone: its label and its noise generator
(seeded from ``numpy.random.SeedSequence([seed, i, stream])``). A batch of any consecutive indices is
therefore the same images on any rank, in any run, with any batch size: a run of N samples can be
resumed with another batch size or number of devices, and grown to more samples, sampling only the new
indices. The files of a run (shards named by their index ranges) are :mod:`.shards`.
"""
from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Iterator, Literal, Optional, Sequence

import numpy as np
import torch

from ..noise import LABEL_STREAM, NOISE_STREAM, NoiseKind, PhiloxStreams, resolve_noise, sample_noise

ClassChoice = Literal["all", "random"]


def parse_classes(classes: str | int | Sequence[int] | None, num_classes: Optional[int]) -> ClassChoice | list[int]:
    """``"all"`` (cycle through every class), ``"random"`` (uniform, as the reference) or explicit labels.

    Accepts ``"3"``, ``"1,7,9"``, ``[1, 7]``; every label must lie in ``[0, num_classes)``.
    """
    if classes is None:
        classes = "all"
    if isinstance(classes, str):
        text = classes.strip().lower()
        if text in ("all", "random"):
            if num_classes is None:
                return "all"  # unconditional: labels are not used
            return text  # type: ignore[return-value]
        parts = [part.strip() for part in text.split(",")]
        if text and not all(parts):
            raise ValueError(f"classes {classes!r} has an empty entry: give comma-separated integers like '1,7,9'")
        try:
            classes = [int(part) for part in parts if part]
        except ValueError:
            raise ValueError(f"classes must be 'all', 'random' or comma-separated integers, got {classes!r}") from None
    elif isinstance(classes, int):
        classes = [classes]
    labels = [int(label) for label in classes]
    if not labels:
        raise ValueError("classes is an empty list")
    if num_classes is None:
        raise ValueError(f"classes {labels} were requested, but neither the model nor a classifier knows classes")
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise ValueError(f"class label(s) {bad} out of range: the model has {num_classes} classes "
                         f"(0..{num_classes - 1})")
    return labels


@dataclass(frozen=True)
class SamplePlan:
    """The samples of a run: their labels and noise seeds, by index.

    Args:
        num_samples: total number of samples N (indices 0..N-1).
        seed: the run's seed; sample i depends on ``(seed, i)`` only.
        num_classes: class count of the labels (``None``: no labels).
        classes: ``"all"`` cycles 0..K-1 by index, ``"random"`` draws uniformly per sample, a list
            cycles through the given labels by index.
        noise: how the per-sample noise is drawn (:data:`~guided_diffusion.sampler_protocol.NoiseKind`):
            ``generators``, ``philox`` or ``auto`` (``philox`` on accelerators, ``generators`` on CPU).
    """

    num_samples: int
    seed: int = 0
    num_classes: Optional[int] = None
    classes: ClassChoice | tuple[int, ...] = "all"
    noise: NoiseKind = "auto"

    def __post_init__(self):
        resolve_noise(self.noise, "cpu")  # a bad kind fails here
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        if not isinstance(self.classes, str):
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))

    def identity(self) -> dict:
        """What makes sample i the image it is (not N: a run grows; not the batching: a run is re-batched)."""
        return dict(seed=self.seed, num_classes=self.num_classes, classes=self.classes, noise=self.noise)

    def _sequence(self, index: int, stream: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed, index, stream])

    def label(self, index: int) -> Optional[int]:
        if self.num_classes is None:
            return None
        if self.classes == "random":
            return int(np.random.default_rng(self._sequence(index, LABEL_STREAM)).integers(self.num_classes))
        cycle = range(self.num_classes) if self.classes == "all" else self.classes
        return int(cycle[index % len(cycle)])

    def labels(self, indices: range) -> Optional[torch.Tensor]:
        """The labels of samples ``indices`` (``None`` without classes)."""
        if self.num_classes is None:
            return None
        return torch.tensor([self.label(i) for i in indices], dtype=torch.long)

    def generators(self, indices: range, device: torch.device | str = "cpu",
                   stream: int = NOISE_STREAM) -> list[torch.Generator] | PhiloxStreams:
        """The per-sample noise streams of ``indices``, seeded from ``(seed, index, stream)``: each sample's noise
        is its own (one generator per sample, or Philox streams, as ``noise`` says on ``device``)."""
        return sample_noise(self.seed, indices, device, stream, self.noise)


class Batches(SequenceABC):
    """The index ranges still to sample, cut into batches of at most ``batch_size`` consecutive indices: a sequence
    computed on demand (batch k is found from the counts per range), so no run holds a list of all its batches.

    Args:
        missing: the index ranges no intact shard holds, in order.
        batch_size: samples per batch.
    """

    def __init__(self, missing: Sequence[range], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.missing, self.batch_size = tuple(missing), batch_size
        self._ends = list(itertools.accumulate(-(-len(span) // batch_size) for span in self.missing))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        which = bisect.bisect_right(self._ends, k)
        span = self.missing[which]
        start = span.start + (k - (self._ends[which - 1] if which else 0)) * self.batch_size
        return range(start, min(start + self.batch_size, span.stop))

    @property
    def num_samples(self) -> int:
        return sum(len(span) for span in self.missing)


def batches(missing: Sequence[range], batch_size: int) -> Batches:
    """Cut the index ranges still to sample into batches of at most ``batch_size`` consecutive indices."""
    return Batches(missing, batch_size)


def batches_of_rank(work: Sequence[range], rank: int, world_size: int) -> Iterator[range]:
    """Round-robin assignment: rank r takes batches r, r + W, r + 2W, ... (one at a time)."""
    return (work[k] for k in range(rank, len(work), world_size))
