"""Sample runs that grow, are re-batched and move: a run's identity is the content of its files and its sampling
settings, not N, the batch size, the devices or the checkpoint's path (``gd sample``, issue #18 part 1)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import guided_diffusion.content_hash as content_hash_module
from guided_diffusion.content_hash import content_hash, sha256_of
from guided_diffusion.generation import runner as runner_module
from guided_diffusion.commands.sample import sample
from guided_diffusion.generation.plan import SamplePlan
from guided_diffusion.generation.shards import merge_shards, read_samples, scan, shard_path, write_shard
from tests.helpers import wandb_run
from tests.test_generation import checkpoints, read  # noqa: F401  (the tiny checkpoints fixture)

OPTIONS = dict(steps="ddim3", accelerator="cpu", progress=False, classes="random", seed=11)
WRITE_SHARD = runner_module.write_shard


def free_port() -> int:
    """A TCP port free now, for one test's DDP rendezvous (tests run two at a time)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def count_writes(monkeypatch) -> list[range]:
    written = []

    def write(directory, indices, *rest):
        written.append(indices)
        return WRITE_SHARD(directory, indices, *rest)

    monkeypatch.setattr(runner_module, "write_shard", write)
    return written


def test_growing_a_run_samples_only_the_new_indices_and_equals_a_fresh_run(checkpoints, tmp_path,  # noqa: F811
                                                                           monkeypatch):
    fresh = read(sample(checkpoints["diffusion"], str(tmp_path / "fresh"), classifier=checkpoints["classifier"],
                        scale=2.0, num_samples=25, batch_size=10, **OPTIONS).samples)
    run = tmp_path / "run"
    small = read(sample(checkpoints["diffusion"], str(run), classifier=checkpoints["classifier"], scale=2.0,
                        num_samples=10, batch_size=10, **OPTIONS).samples)
    written = count_writes(monkeypatch)
    grown = sample(checkpoints["diffusion"], str(run), classifier=checkpoints["classifier"], scale=2.0,
                   num_samples=25, batch_size=10, **OPTIONS)
    assert written == [range(10, 20), range(20, 25)]  # the first 10 samples are not made again
    data = read(grown.samples)
    assert grown.samples.name == "samples_25x16x16x3.npz"
    assert np.array_equal(data["arr_0"], fresh["arr_0"]) and np.array_equal(data["arr_1"], fresh["arr_1"])
    assert np.array_equal(data["arr_0"][:10], small["arr_0"])  # sample i is the same image in both runs
    # shrinking takes samples 0..5 of the shards on disk and samples nothing
    written.clear()
    shrunk = read(sample(checkpoints["diffusion"], str(run), classifier=checkpoints["classifier"], scale=2.0,
                         num_samples=6, batch_size=4, **OPTIONS).samples)
    assert written == [] and np.array_equal(shrunk["arr_0"], fresh["arr_0"][:6])


def test_a_resume_with_another_batch_size_from_a_moved_checkpoint(checkpoints, tmp_path, monkeypatch):  # noqa: F811
    reference = read(sample(checkpoints["diffusion"], str(tmp_path / "reference"), num_samples=10, batch_size=4,
                            **OPTIONS).samples)
    written = []

    def crash_after_one(directory, indices, images, labels):
        if written:
            raise RuntimeError("simulated crash")
        written.append(indices)
        return WRITE_SHARD(directory, indices, images, labels)

    monkeypatch.setattr(runner_module, "write_shard", crash_after_one)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sample(checkpoints["diffusion"], str(tmp_path / "run"), num_samples=10, batch_size=4, **OPTIONS)
    moved = tmp_path / "elsewhere" / "copy.ckpt"
    moved.parent.mkdir()
    shutil.copy(checkpoints["diffusion"], moved)
    written = count_writes(monkeypatch)
    result = sample(str(moved), str(tmp_path / "run"), num_samples=10, batch_size=3, **OPTIONS)
    assert written == [range(4, 7), range(7, 10)]
    resumed = read(result.samples)
    assert np.array_equal(resumed["arr_0"], reference["arr_0"]) and np.array_equal(resumed["arr_1"], reference["arr_1"])


def test_a_checkpoint_whose_content_changed_is_refused(checkpoints, tmp_path):  # noqa: F811
    path = tmp_path / "model.ckpt"
    shutil.copy(checkpoints["diffusion"], path)
    sample(str(path), str(tmp_path / "run"), num_samples=2, batch_size=2, **OPTIONS)
    state = torch.load(path, weights_only=True)
    key = next(k for k in state["state_dict"] if k.startswith("ema."))
    state["state_dict"][key] = state["state_dict"][key] + 1
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"different run \(settings differ in \['checkpoint'\]\)"):
        sample(str(path), str(tmp_path / "run"), num_samples=4, batch_size=2, **OPTIONS)


def test_the_content_hash_is_cached_by_path_size_mtime_inode_and_ctime(tmp_path, monkeypatch):
    file, cache = tmp_path / "weights.bin", tmp_path / "run" / "fingerprints.json"
    file.write_bytes(b"abc")
    assert sha256_of(file) == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    calls = []
    real = content_hash_module.sha256_of
    monkeypatch.setattr(content_hash_module, "sha256_of", lambda path: calls.append(path) or real(path))
    first = content_hash(file, cache)
    assert content_hash(file, cache) == first and len(calls) == 1  # read once
    file.write_bytes(b"abd")  # changed in place (new mtime): hashed again, to another digest
    os.utime(file, ns=(1, 1))
    assert content_hash(file, cache) != first and len(calls) == 2
    cache.write_text("{not json")  # a broken cache is only a shortcut: rebuilt
    assert content_hash(file, cache) == real(file) and len(calls) == 3
    # rewritten in place with the same size and its modification time restored: the change time still moves
    before = file.stat()
    time.sleep(0.01)
    file.write_bytes(b"abe")
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert file.stat().st_mtime_ns == before.st_mtime_ns and file.stat().st_size == before.st_size
    assert content_hash(file, cache) == real(file) and len(calls) == 4  # hashed again, not the cached "abd"


def test_scan_takes_each_index_once_and_finds_the_gaps(tmp_path):
    plan = SamplePlan(num_samples=10, num_classes=3, classes="random", seed=2)
    image = lambda indices: np.full((len(indices), 2, 2, 1), indices.start, np.uint8)  # noqa: E731
    for indices in (range(0, 4), range(2, 6), range(8, 12)):  # overlapping, with a gap, one past N
        write_shard(tmp_path, indices, image(indices), plan.labels(indices).numpy())
    write_shard(tmp_path, range(6, 7), image(range(6, 7)), (plan.labels(range(6, 7)).numpy() + 1) % 3)  # bad labels
    coverage = scan(tmp_path, plan, set_aside_bad=True)
    assert [(span.start, span.stop, offset) for span, _, offset in coverage.pieces] == [(0, 4, 0), (4, 6, 2),
                                                                                        (8, 10, 0)]
    assert coverage.missing == (range(6, 8),) and coverage.num_present == 8
    assert (tmp_path / "shard-00000006-00000007.npz.bad").exists()
    assert read_samples(tmp_path, plan, range(3, 6)).reshape(3, -1)[:, 0].tolist() == [0, 2, 2]
    assert read_samples(tmp_path, plan, range(5, 8)) is None
    with pytest.raises(FileNotFoundError, match="samples 6..7 of .* are missing"):
        merge_shards(tmp_path, plan)
    write_shard(tmp_path, range(6, 8), image(range(6, 8)), plan.labels(range(6, 8)).numpy())
    merged = read(merge_shards(tmp_path, plan))
    assert merged["arr_0"][:, 0, 0, 0].tolist() == [0, 0, 0, 0, 2, 2, 6, 6, 8, 8]
    assert np.array_equal(merged["arr_1"], plan.labels(range(10)).numpy())  # indices 0..9, once each
    assert shard_path(tmp_path, range(8, 12)).exists()  # a larger run's shard is left alone


def test_a_run_of_an_earlier_layout_is_refused(checkpoints, tmp_path):  # noqa: F811
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"seed": 11, "num_samples": 2, "batch_size": 2}')
    with pytest.raises(ValueError, match="earlier version of this project"):
        sample(checkpoints["diffusion"], str(tmp_path / "run"), num_samples=2, batch_size=2, **OPTIONS)


def test_two_processes_grow_a_one_process_run(checkpoints, tmp_path):  # noqa: F811
    """Samples 0..2 from one process with batches of 3, grown to 7 by ``gd sample --devices 2`` with batches of 2
    (rank 0 takes 3..4, rank 1 5..6), equal the 7 samples of one process; grown again to 8 (one batch for two
    ranks: rank 1 has nothing to do and must not hang the run)."""
    common = dict(classifier=checkpoints["classifier"], scale=2.0, steps="ddim3", accelerator="cpu", progress=False)
    one = read(sample(checkpoints["diffusion"], str(tmp_path / "one"), num_samples=8, batch_size=2, **common).samples)
    sample(checkpoints["diffusion"], str(tmp_path / "two"), num_samples=3, batch_size=3, **common)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "MASTER_PORT": str(free_port())}

    def two_processes(count):
        args = [checkpoints["diffusion"], "--classifier", checkpoints["classifier"], "--scale", "2", "--num_samples",
                str(count), "--batch_size", "2", "--steps", "ddim3", "--accelerator", "cpu", "--progress", "false"]
        command = [sys.executable, "-m", "guided_diffusion", "sample", *args, "--output", str(tmp_path / "two"),
                   "--devices", "2", "--timeout_minutes", "1"]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert completed.returncode == 0, completed.stderr[-3000:]
        return completed.stdout

    assert "3 of 7 samples already written, sampling 4 in 2 batches of up to 2" in two_processes(7)
    assert sorted(p.name for p in (tmp_path / "two").glob("shard-*")) == [
        "shard-00000000-00000003.npz", "shard-00000003-00000005.npz", "shard-00000005-00000007.npz"]
    two = read(tmp_path / "two" / "samples_7x16x16x3.npz")
    assert np.array_equal(two["arr_0"], one["arr_0"][:7]) and np.array_equal(two["arr_1"], one["arr_1"][:7])
    assert "7 of 8 samples already written, sampling 1 in 1 batches of up to 2" in two_processes(8)
    grown = read(tmp_path / "two" / "samples_8x16x16x3.npz")
    assert np.array_equal(grown["arr_0"], one["arr_0"]) and np.array_equal(grown["arr_1"], one["arr_1"])


def test_a_sample_run_logs_to_wandb_offline_with_its_grid_cost_and_artifact(checkpoints, tmp_path):  # noqa: F811
    output = tmp_path / "run"
    result = sample(checkpoints["diffusion"], str(output), classifier=checkpoints["classifier"], scale=2.0,
                    num_samples=4, batch_size=4, wandb_project="gd-tests", log_artifacts=True, **OPTIONS)
    run = wandb_run(next((output / "wandb").glob("offline-run-*")))
    assert run["config"]["scale"] == 2.0 and run["config"]["num_samples"] == 4 and run["config"]["seed"] == 11
    assert run["config"]["checkpoint"] == sha256_of(checkpoints["diffusion"])
    assert run["summary"]["samples/_type"] == "image-file" and "samples/path" in run["history"]  # the grid
    assert list((next((output / "wandb").glob("offline-run-*")) / "files" / "media" / "images").glob("*.png"))
    assert run["summary"]["cost/classifier_evaluations_per_sample"] == 3  # ddim3, guided at every step
    (name, artifact), = [(name, a) for name, a in run["artifacts"].items() if a["type"] == "samples"]
    assert name.startswith("samples-") and artifact["type"] == "samples"
    assert artifact["files"] == sorted([result.samples.name, "run.json"])
    assert artifact["metadata"]["inputs"]["checkpoint"]["sha256"] == sha256_of(checkpoints["diffusion"])
    assert artifact["metadata"]["inputs"]["classifier"]["artifact"].startswith("classifier-")


def test_ddp_spawn_returns_rank_0s_result_and_equals_one_process(checkpoints, tmp_path, monkeypatch):  # noqa: F811
    """``--strategy ddp_spawn``: the processes are started from this one and rank 0's result comes back; with one
    device the strategy needs no launch at all."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))  # its own port: another DDP test may run beside it
    common = dict(classifier=checkpoints["classifier"], scale=2.0, num_samples=5, batch_size=2, **OPTIONS)
    one = read(sample(checkpoints["diffusion"], str(tmp_path / "one"), **common).samples)
    spawned = sample(checkpoints["diffusion"], str(tmp_path / "two"), devices=2, strategy="ddp_spawn",
                     timeout_minutes=2, **common)
    assert spawned.samples == tmp_path / "two" / "samples_5x16x16x3.npz" and spawned.cost is not None
    two = read(spawned.samples)
    assert np.array_equal(two["arr_0"], one["arr_0"]) and np.array_equal(two["arr_1"], one["arr_1"])
    single = sample(checkpoints["diffusion"], str(tmp_path / "single"), strategy="ddp_spawn", **common)
    assert np.array_equal(read(single.samples)["arr_0"], one["arr_0"])
    with pytest.raises(ValueError, match=r"settings differ in \['seed'\]"):  # a spawned refusal: one line
        sample(checkpoints["diffusion"], str(tmp_path / "two"), devices=2, strategy="ddp_spawn", timeout_minutes=2,
               **{**common, "seed": 12})
