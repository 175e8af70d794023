"""Metric formulas against straightforward numpy implementations written independently here."""

import numpy as np
import pytest
import torch

from guided_diffusion.evaluation import (
    FeatureCollector,
    FeatureStatistics,
    RunningFeatureStatistics,
    compute_metrics,
    frechet_distance,
    inception_score,
    manifold_radii,
    precision_recall,
)

# ------------------------------------------------------------------------------------------------
# Independent numpy references (no scipy.linalg.sqrtm, no torch).


def numpy_fid(x: np.ndarray, y: np.ndarray) -> float:
    """|mu_x - mu_y|^2 + tr(Sx) + tr(Sy) - 2 tr((Sx Sy)^1/2); the trace of the square root is computed as
    sum_i sqrt(lambda_i) of the symmetric PSD matrix Sx^1/2 Sy Sx^1/2 (same eigenvalues as Sx Sy)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mu_x, mu_y = x.mean(0), y.mean(0)
    sx = (x - mu_x).T @ (x - mu_x) / (len(x) - 1)
    sy = (y - mu_y).T @ (y - mu_y) / (len(y) - 1)
    w, v = np.linalg.eigh(sx)
    sx_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(sx_half @ sy @ sx_half)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(sx) + np.trace(sy) - 2 * trace_sqrt)


def numpy_inception_score(logits: np.ndarray, split_size: int) -> float:
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start:start + split_size]
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def numpy_precision_recall(ref: np.ndarray, samples: np.ndarray, k: int) -> tuple[float, float]:
    def sqdist(a, b):
        return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)

    ref_radii = np.sort(sqdist(ref, ref), axis=1)[:, k]  # column 0 is the point itself
    sample_radii = np.sort(sqdist(samples, samples), axis=1)[:, k]
    cross = sqdist(ref, samples)
    precision = (cross <= ref_radii[:, None]).any(axis=0).mean()
    recall = (cross <= sample_radii[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(1234)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    y = (rng.normal(size=(300, 12)) * 1.3 + 0.4).astype(np.float32)
    return x, y


# ------------------------------------------------------------------------------------------------


def test_fid_matches_numpy_reference(features):
    x, y = features
    ours = frechet_distance(FeatureStatistics.from_features(x), FeatureStatistics.from_features(y))
    assert ours == pytest.approx(numpy_fid(x, y), rel=1e-6, abs=1e-6)


def test_fid_of_a_set_with_itself_is_zero(features):
    x, _ = features
    stats = FeatureStatistics.from_features(x)
    assert abs(frechet_distance(stats, stats)) < 1e-6


def test_statistics_are_float64_numpy_cov(features):
    x, _ = features
    stats = FeatureStatistics.from_features(x)
    assert stats.mu.dtype == np.float64 and stats.sigma.dtype == np.float64
    np.testing.assert_allclose(stats.sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    assert stats.count == len(x)


def test_fid_with_singular_covariances_stays_finite():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 20)), rng.normal(size=(6, 20)) + 1  # n < d: rank-deficient covariances
    value = frechet_distance(FeatureStatistics.from_features(x), FeatureStatistics.from_features(y))
    assert np.isfinite(value)
    assert value == pytest.approx(numpy_fid(x, y), rel=1e-4)


def test_fid_rejects_mismatched_dimensions():
    a = FeatureStatistics(np.zeros(3), np.eye(3))
    b = FeatureStatistics(np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(a, b)


def test_inception_score_matches_numpy_reference():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2300, 10)) * 3
    for split_size in (5000, 1000, 700):
        ours = inception_score(logits, split_size)
        assert ours.score == pytest.approx(numpy_inception_score(logits, split_size), rel=1e-6)
    result = inception_score(logits, 1000)
    assert result.split_sizes == (1000, 1000, 300)  # ADM: consecutive chunks, the last one shorter
    assert result.num_splits == 3


def test_inception_score_of_uniform_confident_predictions_is_the_class_count():
    classes = 10
    labels = np.arange(5000) % classes
    logits = 60.0 * np.eye(classes)[labels]  # saturated softmax: p(y|x) is one-hot
    result = inception_score(logits, split_size=5000)
    assert result.score == pytest.approx(classes, rel=1e-6)
    assert result.num_splits == 1
    assert inception_score(logits[:4000], split_size=1000).num_splits == 4


def test_inception_score_of_a_single_class_is_one():
    logits = np.tile([[9.0, 0.0, 0.0]], (50, 1))
    assert inception_score(logits).score == pytest.approx(1.0, abs=1e-9)


def test_precision_recall_match_numpy_reference(features):
    x, y = features
    assert precision_recall(x, y, nearest_k=3) == pytest.approx(numpy_precision_recall(x, y, 3), abs=1e-6)
    assert precision_recall(x, y, nearest_k=5) == pytest.approx(numpy_precision_recall(x, y, 5), abs=1e-6)


def test_precision_recall_do_not_depend_on_the_batch_size(features):
    x, y = features
    assert precision_recall(x, y, batch_size=37) == precision_recall(x, y, batch_size=1000)
    np.testing.assert_allclose(manifold_radii(x, batch_size=13), manifold_radii(x, batch_size=1000),
                               rtol=1e-5)


def test_precision_recall_of_identical_sets_are_one(features):
    x, _ = features
    precision, recall = precision_recall(x, x.copy())
    assert precision == pytest.approx(1.0) and recall == pytest.approx(1.0)


def test_precision_recall_of_disjoint_sets_are_zero(features):
    x, _ = features
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_manifold_radii_are_kth_neighbour_squared_distances():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=np.float32)
    # k=1: nearest other point; squared distances
    np.testing.assert_allclose(manifold_radii(points, nearest_k=1), [1, 1, 4, 9, 16])
    np.testing.assert_allclose(manifold_radii(points, nearest_k=3), [36, 25, 9, 25, 81])


def test_too_few_samples_raise_clear_errors():
    with pytest.raises(ValueError, match="precision/recall.*at least 4 samples, got 3"):
        precision_recall(np.zeros((10, 2)), np.random.rand(3, 2))
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        FeatureStatistics.from_features(np.zeros((1, 4)))


def test_running_statistics_equal_numpy_on_the_concatenation(features):
    x, _ = features
    metric = RunningFeatureStatistics(num_features=x.shape[1])
    for chunk in np.array_split(x, 7):
        metric.update(torch.from_numpy(chunk))
    stats = metric.compute()
    np.testing.assert_allclose(stats.mu, x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)
    assert stats.count == len(x)


def test_feature_collector_concatenates_batches(features):
    x, y = features
    collector = FeatureCollector(keys=("pool", "logits"))
    collector.update({"pool": torch.from_numpy(x[:100])})
    collector.update({"pool": torch.from_numpy(x[100:])})
    out = collector.compute()
    np.testing.assert_array_equal(out["pool"], x)
    assert "logits" not in out


def test_compute_metrics_reports_all_metrics_with_notes(features):
    x, y = features
    rng = np.random.default_rng(3)
    reference = {"pool": x, "spatial": x[:, :5]}
    samples = {"pool": y, "spatial": y[:, :5], "logits": rng.normal(size=(len(y), 4))}
    results = compute_metrics(reference, samples, split_size=100)
    assert list(results) == ["fid", "sfid", "inception_score", "precision", "recall"]
    assert results["fid"].value == pytest.approx(numpy_fid(x, y), rel=1e-6)
    assert results["sfid"].value == pytest.approx(numpy_fid(x[:, :5], y[:, :5]), rel=1e-6)
    assert results["inception_score"].note.startswith("3 splits of 100")
    assert results["precision"].note == "k=3, 400 reference vs 300 samples"
    # IS without logits is reported unavailable, never a made-up number
    del samples["logits"]
    unavailable = compute_metrics(reference, samples, metrics=["inception_score"],
                                  missing_logits_hint="no head")
    assert unavailable["inception_score"].value is None and "no head" in unavailable["inception_score"].note


def test_compute_metrics_uses_stored_reference_statistics(features):
    x, y = features
    stored = {"pool": FeatureStatistics(np.zeros(12), np.eye(12))}
    results = compute_metrics({}, {"pool": y}, reference_statistics=stored, metrics=["fid", "precision"])
    expected = frechet_distance(FeatureStatistics.from_features(y), stored["pool"])
    assert results["fid"].value == pytest.approx(expected)
    assert "stored reference statistics" in results["fid"].note
    assert results["precision"].value is None  # no reference images -> no precision/recall


def test_small_sample_fid_is_flagged_rank_deficient():
    rng = np.random.default_rng(0)
    results = compute_metrics({"pool": rng.normal(size=(10, 32))}, {"pool": rng.normal(size=(10, 32))},
                              metrics=["fid"])
    assert "rank-deficient" in results["fid"].note
