"""``gd evaluate`` at scale (issue #18 part 3) and its W&B run (part 2): reference features cached by content,
features computed by several processes and gathered, the evaluation logged offline."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from guided_diffusion.data.datasets import load_mnist5k
from guided_diffusion.content_hash import content_hash
from guided_diffusion.commands.evaluate import evaluate
from tests.helpers import wandb_run

evaluate_module = importlib.import_module("guided_diffusion.evaluation.evaluate")
OPTIONS = dict(features="mnist", batch_size=50, progress=False)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batches")
    images, labels = load_mnist5k(32, "pad")
    rng = np.random.default_rng(0)
    reference, samples = rng.choice(len(images), 300, replace=False), rng.choice(len(images), 120, replace=False)
    noisy = np.clip(images[samples].astype(int) + rng.integers(-60, 60, images[samples].shape), 0, 255)
    np.savez(folder / "reference.npz", images[reference], labels[reference])
    np.savez(folder / "samples.npz", noisy.astype(np.uint8), labels[samples])
    return folder


def count_extractions(monkeypatch) -> list[int]:
    calls, real = [], evaluate_module.extract_features

    def counted(extractor, batches, **kwargs):
        result = real(extractor, batches, **kwargs)
        calls.append(len(next(iter(result.values()))))
        return result

    monkeypatch.setattr(evaluate_module, "extract_features", counted)
    return calls


def test_reference_features_are_cached_by_content_and_extractor(batches, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = count_extractions(monkeypatch)
    first = evaluate(str(batches / "reference.npz"), str(batches / "samples.npz"), reference_cache=str(cache),
                     **OPTIONS)
    assert calls == [300, 120] and len(list(cache.glob("reference-*.npz"))) == 1
    second = evaluate(str(batches / "reference.npz"), str(batches / "samples.npz"), reference_cache=str(cache),
                      **OPTIONS)
    assert calls == [300, 120, 120]  # the reference was read from the cache
    assert second["metrics"] == first["metrics"] and second["reference_cache"] == str(cache)
    copy = tmp_path / "copy.npz"  # the same content at another path: the same cache entry
    copy.write_bytes((batches / "reference.npz").read_bytes())
    evaluate(str(copy), str(batches / "samples.npz"), reference_cache=str(cache), **OPTIONS)
    assert calls[-1] == 120 and len(calls) == 4
    with np.load(copy) as data:  # other content at that path: computed again, a second entry
        np.savez(copy, data["arr_0"][:200], data["arr_1"][:200])
    changed = evaluate(str(copy), str(batches / "samples.npz"), reference_cache=str(cache), **OPTIONS)
    assert calls[-2:] == [200, 120] and len(list(cache.glob("reference-*.npz"))) == 2
    assert changed["metrics"]["fid"] != first["metrics"]["fid"]
    evaluate(str(batches / "reference.npz"), str(batches / "samples.npz"), reference_cache="none", **OPTIONS)
    assert calls[-2:] == [300, 120]  # no cache: computed


def test_the_cache_key_holds_the_extractor_and_the_content_of_its_weights(batches, tmp_path, monkeypatch):
    from guided_diffusion.evaluation import build_feature_extractor

    cache = tmp_path / "cache"
    extractor = build_feature_extractor("mnist")
    identity = evaluate_module.extractor_identity(extractor, "mnist", "tf1", cache / "fingerprints.json")
    assert identity.split("|")[1] == content_hash(extractor.weights_path)  # the weights' content, not their path
    calls = count_extractions(monkeypatch)
    reference = str(batches / "reference.npz")
    first = evaluate_module.reference_features(extractor, reference, identity, cache=cache)
    assert torch_equal(evaluate_module.reference_features(extractor, reference, identity, cache=cache), first)
    assert len(calls) == 1
    evaluate_module.reference_features(extractor, reference, identity.replace("|resize", "|pad"), cache=cache)
    assert len(calls) == 2 and len(list(cache.glob("reference-*.npz"))) == 2  # another extractor: its own entry


def torch_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)


def test_two_processes_give_the_metrics_of_one(batches, tmp_path):
    one = evaluate(str(batches / "reference.npz"), str(batches / "samples.npz"), reference_cache="none",
                   output_json=str(tmp_path / "one.json"), **OPTIONS)
    command = [sys.executable, "-m", "guided_diffusion", "evaluate", str(batches / "reference.npz"),
               str(batches / "samples.npz"), "--features", "mnist", "--batch_size", "50", "--progress", "false",
               "--devices", "2", "--accelerator", "cpu", "--reference_cache", str(tmp_path / "cache"),
               "--output_json", str(tmp_path / "two.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert completed.stdout.count("Precision") == 1  # only rank 0 prints the table
    cached, = (tmp_path / "cache").glob("reference-*.npz")  # written once, by rank 0
    from guided_diffusion.evaluation import build_feature_extractor, extract_features, iter_image_batches

    alone = extract_features(build_feature_extractor("mnist"), iter_image_batches(batches / "reference.npz", 50))
    with np.load(cached) as data:  # the gathered features are the one-process features, in order, bit for bit
        assert set(alone) <= set(data.files) and all(np.array_equal(data[key], alone[key]) for key in alone)
    for name, value in one["metrics"].items():  # (BLAS threads differ between the processes: float rounding)
        assert two["metrics"][name] == pytest.approx(value, rel=1e-6), name
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]  # rank 0 reads the cache, rank 1 follows: no collective skew
    assert json.loads((tmp_path / "two.json").read_text())["metrics"] == two["metrics"]


def test_an_evaluation_logs_to_wandb_offline(batches, tmp_path):
    output = tmp_path / "eval" / "metrics.json"
    payload = evaluate(str(batches / "reference.npz"), str(batches / "samples.npz"), output_json=str(output),
                       wandb_project="gd-tests", log_artifacts=True, **OPTIONS)
    folder = next((output.parent / "wandb").glob("offline-run-*"))
    run = wandb_run(folder)
    assert run["config"]["features"] == "mnist" and run["config"]["num_samples"] == 120
    assert run["summary"]["fid"] == pytest.approx(payload["metrics"]["fid"])
    assert run["summary"]["precision"] == pytest.approx(payload["metrics"]["precision"])
    table = json.loads(next((folder / "files" / "media" / "table").glob("metrics_*.table.json")).read_text())
    assert ["FID", payload["metrics"]["fid"]] == table["data"][0][:2]
    assert list((folder / "files" / "media" / "images").glob("samples_*.png"))  # the first samples
    (name, artifact), = [(name, a) for name, a in run["artifacts"].items() if a["type"] == "evaluation"]
    assert name.startswith("evaluation-") and artifact["files"] == ["metrics.json"]
    assert set(artifact["metadata"]["inputs"]) == {"reference", "samples"}


def test_bad_tracking_and_device_options_are_one_line_each(batches, tmp_path):
    for options, message in ((dict(log_artifacts=True), "--log_artifacts needs --wandb_project"),
                             (dict(wandb_project="a b"), "wandb_project 'a b'"),
                             (dict(devices=0), "devices and num_nodes must be positive"),
                             (dict(wandb_project="p", log_artifacts=True), "give --output_json"),
                             (dict(devices=2, device="cuda"), "--device is one process's device")):
        with pytest.raises(ValueError, match=message):
            evaluate(str(batches / "reference.npz"), str(batches / "samples.npz"), **{**OPTIONS, **options})
