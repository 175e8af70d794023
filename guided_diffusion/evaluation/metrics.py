"""FID, sFID, Inception Score and improved precision/recall, with the ADM evaluator's definitions.

Reference: ``openai/guided-diffusion`` ``evaluations/evaluator.py`` (TensorFlow). The formulas, for
feature sets X (reference, n rows) and Y (samples, m rows):

FID / sFID (Heusel et al. 2017), on pool features (FID) or spatial features (sFID, Nash et al. 2021):
    mu = mean of the rows, Sigma = unbiased covariance (``np.cov(rowvar=False)``, divisor n - 1), float64;
    FD = |mu_X - mu_Y|^2 + tr(Sigma_X) + tr(Sigma_Y) - 2 tr(sqrtm(Sigma_X Sigma_Y)).
    ``sqrtm`` is ``scipy.linalg.sqrtm``; if its result is not finite, eps=1e-6 is added to both diagonals
    and it is recomputed; an imaginary part is dropped when the diagonal's is below 1e-3 (else an error).

Inception Score (Salimans et al. 2016), on the logits of the samples:
    p(y|x) = softmax(logits); split the samples *in order* into consecutive chunks of ``split_size``
    (5000; the last chunk may be shorter, exactly like ADM), per chunk
    IS_c = exp( mean_x KL(p(y|x) || p_c(y)) ), p_c(y) = mean of p(y|x) over the chunk;
    IS = mean over chunks. 50,000 samples give the paper's 10 splits of 5000.

Improved precision / recall (Kynkaenniemi et al. 2019), on pool features, k = 3:
    d(a, b) = |a - b|^2 (squared Euclidean, computed as |a|^2 - 2 a.b + |b|^2 clipped at 0, float32);
    r_k(a; S) = the (k+1)-th smallest d(a, s) over s in S, i.e. the k-th nearest neighbour with a itself
    counted at distance 0 (ADM's ``np.partition(..., k)``);
    precision = fraction of y in Y with d(x, y) <= r_k(x; X) for some x in X,
    recall    = fraction of x in X with d(x, y) <= r_k(y; Y) for some y in Y.
    ADM evaluates d in float16 on the GPU (float32 if that overflows); here it is float32, so points whose
    distance ties a radius within float16 rounding may be counted differently.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np
import torch
from scipy import linalg

MetricName = Literal["fid", "sfid", "inception_score", "precision", "recall"]
ALL_METRICS: tuple[MetricName, ...] = ("fid", "sfid", "inception_score", "precision", "recall")
DEFAULT_SPLIT_SIZE = 5000
DEFAULT_NEAREST_K = 3
FID_EPS = 1e-6


# --------------------------------------------------------------------------------------------------
# Fréchet distance


@dataclass
class FeatureStatistics:
    """Mean (D,) and unbiased covariance (D, D) of a feature set, in float64. ``count``: rows used
    (None when read from a file that does not store it)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None

    def __post_init__(self) -> None:
        mu = np.atleast_1d(np.asarray(self.mu, dtype=np.float64))
        sigma = np.atleast_2d(np.asarray(self.sigma, dtype=np.float64))
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise ValueError(f"Statistics need mu of shape (D,) and sigma (D, D); "
                             f"got {mu.shape}, {sigma.shape}.")
        self.mu, self.sigma = mu, sigma

    @property
    def dim(self) -> int:
        return len(self.mu)

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor) -> "FeatureStatistics":
        """mu = mean over rows, sigma = ``np.cov(features, rowvar=False)`` (n - 1 divisor), float64."""
        features = _as_numpy_2d(features, "features")
        require_samples(len(features), 2, "feature statistics (covariance)")
        features = features.astype(np.float64)
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without the ``disp`` argument (deprecated in SciPy 1.16, removed in 1.18)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = linalg.sqrtm(matrix)
    return result[0] if isinstance(result, tuple) else result


def frechet_distance(first: FeatureStatistics, second: FeatureStatistics, eps: float = FID_EPS) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)), with the ADM/TTUR eps fallback (see module)."""
    if first.mu.shape != second.mu.shape:
        raise ValueError(f"Feature statistics have different dimensions: {first.dim} vs {second.dim} "
                         "(were they computed with the same feature extractor?).")
    diff = first.mu - second.mu
    covmean = _sqrtm(first.sigma.dot(second.sigma))
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates")
        offset = np.eye(first.dim) * eps
        covmean = _sqrtm((first.sigma + offset).dot(second.sigma + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(S1 S2).")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(first.sigma) + np.trace(second.sigma) - 2 * np.trace(covmean))


def symmetric_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """The PSD square root of a symmetric PSD matrix (eigenvalues clipped at 0 against round-off)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(sigma)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance_with_root(reference: FeatureStatistics, reference_root: torch.Tensor,
                               samples: FeatureStatistics) -> float:
    """The Frechet distance of :func:`frechet_distance`, computed with
    tr sqrtm(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)) (S1 S2 is similar to that PSD matrix) from the cached
    root of the reference covariance: two symmetric eigendecompositions instead of a general matrix square
    root (timings: docs/benchmarks.md); on the GPU when there is one. Equal to the ADM formula up to round-off
    (tested)."""
    device, dtype = reference_root.device, reference_root.dtype
    mu_r, sigma_r = (torch.as_tensor(a, device=device, dtype=dtype) for a in (reference.mu, reference.sigma))
    mu_s, sigma_s = (torch.as_tensor(a, device=device, dtype=dtype) for a in (samples.mu, samples.sigma))
    product = reference_root @ sigma_s @ reference_root
    trace_sqrt = torch.linalg.eigvalsh((product + product.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu_r - mu_s).square().sum() + sigma_r.trace() + sigma_s.trace() - 2 * trace_sqrt)


# --------------------------------------------------------------------------------------------------
# Inception Score


@dataclass(frozen=True)
class InceptionScore:
    """``score``: mean over splits (the number ADM reports); ``std``: their standard deviation;
    ``split_sizes``: the size of each consecutive split (the last may be shorter)."""

    score: float
    std: float
    split_sizes: tuple[int, ...]

    @property
    def num_splits(self) -> int:
        return len(self.split_sizes)


def inception_score(logits: np.ndarray | torch.Tensor,
                    split_size: int = DEFAULT_SPLIT_SIZE) -> InceptionScore:
    """IS from class logits, split into consecutive chunks of ``split_size`` (ADM: 5000). In float64 with
    ``log_softmax`` so that 0 log 0 = 0 for saturated predictions."""
    logits = _as_numpy_2d(logits, "logits").astype(np.float64)
    require_samples(len(logits), 1, "Inception Score")
    if split_size < 1:
        raise ValueError(f"split_size must be positive, got {split_size}.")
    log_probs = logits - logits.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    scores, sizes = [], []
    for start in range(0, len(log_probs), split_size):
        part_log = log_probs[start:start + split_size]
        part = np.exp(part_log)
        log_marginal = np.log(part.mean(axis=0, keepdims=True))
        terms = np.where(part > 0, part * (part_log - log_marginal), 0.0)
        scores.append(math.exp(terms.sum(axis=1).mean()))
        sizes.append(len(part))
    return InceptionScore(float(np.mean(scores)), float(np.std(scores)), tuple(sizes))


# --------------------------------------------------------------------------------------------------
# Improved precision and recall


def _squared_distances(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """max(|a|^2 - 2 a.b + |b|^2, 0) for every pair (the ADM DistanceBlock)."""
    row_norms = rows.pow(2).sum(dim=1, keepdim=True)
    column_norms = columns.pow(2).sum(dim=1).unsqueeze(0)
    return (row_norms - 2 * rows @ columns.T + column_norms).clamp_min_(0)


def _as_tensor(features: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        features = torch.from_numpy(np.ascontiguousarray(_as_numpy_2d(features, "features")))
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (samples, dims), got shape {tuple(features.shape)}.")
    return features.to(device=device, dtype=torch.float32)


def manifold_radii(features: np.ndarray | torch.Tensor, nearest_k: int = DEFAULT_NEAREST_K,
                   batch_size: int = 1000, device: torch.device | str = "cpu") -> np.ndarray:
    """Squared distance from each row to its k-th nearest neighbour in the same set (self at distance 0
    counts as the 0-th), computed ``batch_size`` rows at a time."""
    points = _as_tensor(features, device)
    require_samples(len(points), nearest_k + 1, f"precision/recall (k={nearest_k})")
    radii = torch.empty(len(points), dtype=torch.float32, device=device)
    for start in range(0, len(points), batch_size):
        distances = _squared_distances(points[start:start + batch_size], points)
        radii[start:start + batch_size] = distances.kthvalue(nearest_k + 1, dim=1).values
    return radii.cpu().numpy()


def precision_recall(reference: np.ndarray | torch.Tensor, samples: np.ndarray | torch.Tensor,
                     nearest_k: int = DEFAULT_NEAREST_K, batch_size: int = 1000,
                     device: torch.device | str = "cpu") -> tuple[float, float]:
    """(precision, recall) of ``samples`` against ``reference`` (see the module docstring)."""
    reference_t, samples_t = _as_tensor(reference, device), _as_tensor(samples, device)
    if reference_t.shape[1] != samples_t.shape[1]:
        raise ValueError(f"Feature dimensions differ: {reference_t.shape[1]} vs {samples_t.shape[1]}.")
    reference_radii = torch.from_numpy(manifold_radii(reference_t, nearest_k, batch_size, device)).to(device)
    sample_radii = torch.from_numpy(manifold_radii(samples_t, nearest_k, batch_size, device)).to(device)
    sample_inside = torch.zeros(len(samples_t), dtype=torch.bool, device=device)
    reference_inside = torch.zeros(len(reference_t), dtype=torch.bool, device=device)
    for i in range(0, len(reference_t), batch_size):
        for j in range(0, len(samples_t), batch_size):
            distances = _squared_distances(reference_t[i:i + batch_size], samples_t[j:j + batch_size])
            sample_inside[j:j + batch_size] |= (distances <= reference_radii[i:i + batch_size, None]).any(0)
            reference_inside[i:i + batch_size] |= (distances <= sample_radii[None, j:j + batch_size]).any(1)
    return float(sample_inside.double().mean()), float(reference_inside.double().mean())


# --------------------------------------------------------------------------------------------------
# All metrics from two feature dicts


def require_samples(count: int, minimum: int, what: str) -> None:
    """Raise a ValueError naming the metric when ``count < minimum``."""
    if count < minimum:
        raise ValueError(f"{what} needs at least {minimum} samples, got {count}.")


def _as_numpy_2d(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (samples, dims), got shape {values.shape}.")
    return values


@dataclass
class MetricValue:
    """One reported number: ``value`` is None when the metric could not be computed (``note`` says why)."""

    name: MetricName
    value: float | None
    note: str = ""
    details: dict = field(default_factory=dict)


def _fid_note(reference: FeatureStatistics, samples: FeatureStatistics, stored: bool) -> str:
    source = "stored reference statistics" if stored else f"{reference.count} reference"
    note = f"{source} vs {samples.count} samples, {samples.dim}-d"
    smallest = min(c for c in (reference.count, samples.count) if c is not None)
    if smallest <= samples.dim:
        note += f"; covariance rank-deficient ({smallest} <= {samples.dim} samples): biased, not comparable"
    return note


def compute_metrics(
    reference: Mapping[str, np.ndarray],
    samples: Mapping[str, np.ndarray],
    *,
    reference_statistics: Mapping[str, FeatureStatistics] | None = None,
    metrics: Sequence[MetricName] = ALL_METRICS,
    split_size: int = DEFAULT_SPLIT_SIZE,
    nearest_k: int = DEFAULT_NEAREST_K,
    distance_batch_size: int = 1000,
    device: torch.device | str = "cpu",
    missing_logits_hint: str = "the feature extractor has no classification head (no logits)",
) -> dict[MetricName, MetricValue]:
    """Compute ``metrics`` from feature dicts ``{"pool", "spatial", "logits"?}`` of the reference and the
    samples (the same extractor for both). ``reference_statistics`` (``{"pool": ..., "spatial": ...}``,
    e.g. read from an ADM reference batch) replace the reference features for FID/sFID, as in ADM.

    Raises ValueError when a requested metric lacks the features it needs or has too few samples.
    """
    reference_statistics = dict(reference_statistics or {})
    results: dict[MetricName, MetricValue] = {}
    for name in metrics:
        if name not in ALL_METRICS:
            raise ValueError(f"Unknown metric {name!r}; choose from {ALL_METRICS}.")
    for name, key in (("fid", "pool"), ("sfid", "spatial")):
        if name not in metrics:
            continue
        if key not in samples:
            raise ValueError(f"{name} needs '{key}' features of the samples.")
        sample_stats = FeatureStatistics.from_features(samples[key])
        stored = key in reference_statistics
        if stored:
            reference_stats = reference_statistics[key]
        elif key in reference:
            reference_stats = FeatureStatistics.from_features(reference[key])
        else:
            raise ValueError(f"{name} needs '{key}' features or statistics of the reference.")
        value = frechet_distance(sample_stats, reference_stats)
        results[name] = MetricValue(name, value, _fid_note(reference_stats, sample_stats, stored))
    if "inception_score" in metrics:
        if "logits" not in samples:
            results["inception_score"] = MetricValue("inception_score", None,
                                                     f"unavailable: {missing_logits_hint}")
        else:
            score = inception_score(samples["logits"], split_size)
            sizes = score.split_sizes
            if len(set(sizes)) == 1:
                note = f"{len(sizes)} split{'s' if len(sizes) > 1 else ''} of {sizes[0]}"
            else:
                note = f"{len(sizes)} splits of {sizes[0]}, last of {sizes[-1]}"
            if sum(sizes) < split_size:
                note += f" (fewer than {split_size} samples)"
            note += f", std {score.std:.3f}"
            if sizes != (DEFAULT_SPLIT_SIZE,) * 10:
                note += "; ADM reports use 10 splits of 5000"
            results["inception_score"] = MetricValue(
                "inception_score", score.score, note, {"std": score.std, "split_sizes": list(sizes)})
    wanted = [m for m in ("precision", "recall") if m in metrics]
    if wanted:
        if "pool" not in samples:
            raise ValueError("precision/recall need 'pool' features of the samples.")
        if "pool" not in reference:
            for name in wanted:
                results[name] = MetricValue(name, None, "unavailable: the reference has no images (arr_0)")
        else:
            precision, recall = precision_recall(reference["pool"], samples["pool"], nearest_k,
                                                 distance_batch_size, device)
            note = f"k={nearest_k}, {len(reference['pool'])} reference vs {len(samples['pool'])} samples"
            for name, value in (("precision", precision), ("recall", recall)):
                if name in wanted:
                    results[name] = MetricValue(name, value, note)
    return {name: results[name] for name in ALL_METRICS if name in results}


def minimum_samples(metrics: Sequence[MetricName] = ALL_METRICS, nearest_k: int = DEFAULT_NEAREST_K) -> int:
    """Fewest samples the requested metrics can be computed from (covariance: 2; k-NN radii: k + 1)."""
    needs = {"fid": 2, "sfid": 2, "inception_score": 1, "precision": nearest_k + 1, "recall": nearest_k + 1}
    return max(needs[m] for m in metrics)
