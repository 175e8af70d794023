"""torchmetrics plumbing: accumulate features/statistics over batches and ranks, then score.

These are :class:`torchmetrics.Metric` subclasses, so under DDP ``compute()`` first gathers every
rank's states (sums are all-reduced, feature lists all-gathered) and the result is identical on all
ranks. The formulas live in :mod:`guided_diffusion.evaluation.metrics`; nothing here changes them.

- :class:`RunningFeatureStatistics`: float64 running sums -> (mu, sigma) for FID without keeping
  features (memory O(D^2) whatever the number of samples).
- :class:`FeatureCollector`: keeps every feature row (needed by precision/recall and IS).
- :class:`SampleQualityMetric`: images in, FID/sFID/IS/precision/recall out, against fixed reference
  features or stored statistics (for an in-training callback or a guidance sweep).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .metrics import ALL_METRICS, DEFAULT_NEAREST_K, DEFAULT_SPLIT_SIZE, FeatureStatistics, MetricName, \
    compute_metrics, require_samples


class RunningFeatureStatistics(Metric):
    """Streaming mean and unbiased covariance of D-dimensional features, in float64.

    States (all summed across ranks): n, s = sum x, S = sum x x^T. Then mu = s / n and
    Sigma = (S - n mu mu^T) / (n - 1), which equals ``np.cov(X, rowvar=False)`` on the concatenation.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_features = num_features
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", torch.zeros(num_features, num_features, dtype=torch.float64),
                       dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        features = torch.as_tensor(features).to(self.total.device, torch.float64)
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"Expected features of shape (B, {self.num_features}), "
                             f"got {tuple(features.shape)}.")
        self.count += features.shape[0]
        self.total += features.sum(dim=0)
        self.outer += features.T @ features

    def compute(self) -> FeatureStatistics:
        count = int(self.count.item())
        require_samples(count, 2, "feature statistics (covariance)")
        mu = self.total / count
        sigma = (self.outer - count * torch.outer(mu, mu)) / (count - 1)
        return FeatureStatistics(mu.cpu().numpy(), sigma.cpu().numpy(), count)


class FeatureCollector(Metric):
    """Keeps all feature rows per key (``update({"pool": (B, D), ...})``); ``compute()`` returns
    ``{key: float32 numpy (N, D)}`` concatenated over batches and ranks (rank order under DDP)."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, keys: Sequence[str] = ("pool", "spatial", "logits"), **kwargs) -> None:
        super().__init__(**kwargs)
        self.keys = tuple(keys)
        for key in self.keys:
            self.add_state(f"features_{key}", default=[], dist_reduce_fx="cat")

    def update(self, features: Mapping[str, torch.Tensor]) -> None:
        for key in self.keys:
            if key in features:
                getattr(self, f"features_{key}").append(torch.as_tensor(features[key]).detach().float())

    def compute(self) -> dict[str, np.ndarray]:
        collected = {}
        for key in self.keys:
            state = getattr(self, f"features_{key}")
            if isinstance(state, torch.Tensor) or len(state) > 0:
                collected[key] = dim_zero_cat(state).cpu().numpy()
        return collected


class SampleQualityMetric(FeatureCollector):
    """Images -> features (``extractor``) -> ADM metrics against a fixed reference.

    Args:
        extractor: a :class:`~guided_diffusion.evaluation.features.FeatureExtractor`. Kept out of the
            module tree on purpose, so its weights (87 MB for Inception) never enter checkpoints; it is
            moved to the images' device on use.
        reference_features: ``{"pool", "spatial"}`` arrays of the reference set (pool is needed for
            precision/recall).
        reference_statistics: stored ``{"pool", "spatial"}`` statistics used for FID/sFID instead.
        metrics: which metrics ``compute()`` returns.
        split_size, nearest_k: IS split size and the k of precision/recall.
    """

    def __init__(self, extractor, reference_features: Mapping[str, np.ndarray] | None = None, *,
                 reference_statistics: Mapping[str, FeatureStatistics] | None = None,
                 metrics: Sequence[MetricName] = ALL_METRICS, split_size: int = DEFAULT_SPLIT_SIZE,
                 nearest_k: int = DEFAULT_NEAREST_K, **kwargs) -> None:
        super().__init__(keys=tuple(extractor.feature_dims), **kwargs)
        self.__dict__["extractor"] = extractor  # not registered as a submodule (see class docstring)
        self.reference_features = dict(reference_features or {})
        self.reference_statistics = dict(reference_statistics or {})
        self.metrics = tuple(metrics)
        self.split_size = split_size
        self.nearest_k = nearest_k

    def update(self, images: torch.Tensor) -> None:  # type: ignore[override]
        """``images``: float NCHW in [-1, 1] (model output) or uint8 NHWC."""
        if isinstance(images, torch.Tensor) and hasattr(self.extractor, "to"):
            self.extractor.to(images.device)
        super().update(self.extractor(images))

    def compute(self) -> dict[str, float | None]:  # type: ignore[override]
        results = compute_metrics(
            self.reference_features, super().compute(), reference_statistics=self.reference_statistics,
            metrics=self.metrics, split_size=self.split_size, nearest_k=self.nearest_k, device=self.device,
        )
        return {name: result.value for name, result in results.items()}
