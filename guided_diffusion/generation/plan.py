"""What a sampling run produces, independent of how it is batched and how many processes produce it.

Everything about sample i is a function of ``(seed, i)`` alone: its label and its noise generator
(seeded from ``numpy.random.SeedSequence([seed, i, stream])``). A batch of any consecutive indices is
therefore the same images on any rank, in any run, with any batch size: a run of N samples can be
resumed with another batch size or number of devices, and grown to more samples, sampling only the new
indices. The files of a run (shards named by their index ranges) are :mod:`.shards`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

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
        try:
            classes = [int(part) for part in text.split(",") if part.strip()]
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


def batches(missing: Sequence[range], batch_size: int) -> list[range]:
    """Cut the index ranges still to sample into batches of at most ``batch_size`` consecutive indices."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [range(start, min(start + batch_size, span.stop)) for span in missing
            for start in range(span.start, span.stop, batch_size)]


def batches_of_rank(work: Sequence[range], rank: int, world_size: int) -> list[range]:
    """Round-robin assignment: rank r takes batches r, r + W, r + 2W, ..."""
    return list(work[rank::world_size])
