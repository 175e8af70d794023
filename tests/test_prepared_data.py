"""``gd prepare`` and ``ImageDataModule(dataset="prepared")``: the pixels equal ADM's pre-processing bit for bit, the
manifest, one-line refusals, an interrupted prepare resumes, each sample once per epoch across two DDP ranks,
and a run killed mid-epoch (SIGTERM) and resumed sees exactly the samples of an uninterrupted epoch.

Identity of a streamed sample: the streaming tests prepare uniform images whose colour encodes the source file's
index (``R * 256 + G``) and label (``B``); a uniform image stays uniform through crops, resizes and flips.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from litdata import StreamingDataset
from PIL import Image

from guided_diffusion.commands.cli import main
from guided_diffusion.data import ImageDataModule, UnreadableImageError, center_crop_arr
from guided_diffusion.data.prepare import PrepareOptions, default_chunk_bytes, parse_bytes, prepare_images
from guided_diffusion.data.prepared import MANIFEST_NAME, read_manifest
from guided_diffusion.training import RunCheckpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


# ----------------------------------------------------------------------------------------------
# Source folders


def _varied_folder(root: Path) -> list[Path]:
    """JPEGs and PNGs of varied sizes and modes (RGB, grey-scale, CMYK, RGBA, palette) in three class folders, and
    one unreadable file; returns the readable files."""
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "CMYK", "RGBA", "P", "LA"]
    files = []
    for c, name in enumerate(("n03", "n01", "n02")):
        for i in range(6):
            height, width = int(rng.integers(17, 120)), int(rng.integers(17, 120))
            image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            image = image.convert(modes[(i + c) % len(modes)])
            suffix = ".jpg" if image.mode in ("RGB", "L", "CMYK") and i % 2 == 0 else ".png"
            if suffix == ".png" and image.mode == "CMYK":
                image = image.convert("RGB")
            path = root / name / f"{name}_{i}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            files.append(path)
    (root / "n01" / "n01_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return files


def _coded_folder(root: Path, num_images: int, num_classes: int, size: int = 12) -> Path:
    """Uniform PNGs: image ``i`` of class ``i % num_classes`` has colour (i // 256, i % 256, 40 * class)."""
    for i in range(num_images):
        label = i % num_classes
        path = root / f"c{label}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size + i % 5, size), (i // 256, i % 256, 40 * label)).save(path)
    return root


def _decode_ids(x: torch.Tensor) -> list[tuple[int, int]]:
    """(source index, class) of a batch of coded images in [-1, 1]."""
    pixels = torch.round((x[:, :, 0, 0] + 1) * 127.5).long()
    return [(int(r) * 256 + int(g), int(b) // 40) for r, g, b in pixels]


@pytest.fixture(scope="module")
def coded(tmp_path_factory) -> Path:
    """A prepared set of 96 coded images in 3 classes at 8 px, in chunks of unequal size."""
    root = tmp_path_factory.mktemp("coded")
    # 14 chunks of 6 or 7 images: chunks straddle ranks
    prepare_images(_coded_folder(root / "src", 96, 3), root / "prepared",
                   PrepareOptions(image_size=8, num_workers=2, chunk_bytes="1800"))
    return root / "prepared"


# ----------------------------------------------------------------------------------------------
# gd prepare


def test_prepared_images_equal_adm_preprocessing_bit_for_bit(tmp_path, capsys):
    files = _varied_folder(tmp_path / "src")
    main(["prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--image_size", "16", "--num_workers", "2",
          "--chunk_bytes", "4kB"])
    assert "18 images in 3 classes at 16 px" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "out")
    assert manifest.class_names == ("n01", "n02", "n03") and manifest.class_counts == (6, 6, 6)
    assert manifest.skipped == ("n01/n01_broken.jpg",) and manifest.num_source_files == 19
    assert (manifest.image_size, manifest.channels, manifest.complete) == (16, 3, True)
    assert len(list((tmp_path / "out").glob("*.bin"))) > 2  # several chunks, written by two workers
    ordered = sorted([*files, tmp_path / "src" / "n01" / "n01_broken.jpg"])
    dataset = StreamingDataset(str(tmp_path / "out"))
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        path = ordered[item["index"]]
        with Image.open(path) as image:
            expected = center_crop_arr(image.convert("RGB"), 16)
        assert item["image"].dtype == np.uint8 and np.array_equal(item["image"], expected), path
        assert item["label"] == manifest.class_names.index(path.parent.name)
        seen.add(path)
    assert seen == set(files)


def test_grey_scale_and_filename_labels(tmp_path):
    files = _varied_folder(tmp_path / "src")
    manifest = prepare_images(tmp_path / "src", tmp_path / "out",
                              PrepareOptions(image_size=8, labels_from="filename", channels=1, num_workers=1))
    assert manifest.channels == 1 and manifest.class_names == ("n01", "n02", "n03")
    ordered = sorted([*files, tmp_path / "src" / "n01" / "n01_broken.jpg"])
    dataset = StreamingDataset(str(tmp_path / "out"))
    for i in range(len(dataset)):
        item = dataset[i]
        with Image.open(ordered[item["index"]]) as image:
            assert np.array_equal(item["image"], center_crop_arr(image.convert("L"), 8))
    # The validation set takes the training set's classes (and indices), also when it has fewer of them.
    for path in (tmp_path / "src" / "n02").iterdir():
        path.unlink()
    val = prepare_images(tmp_path / "src", tmp_path / "val",
                         PrepareOptions(image_size=8, channels=1, num_workers=1, classes_from=str(tmp_path / "out")))
    assert val.class_names == manifest.class_names and val.class_counts == (6, 0, 6)


def test_bad_destinations_and_settings_are_refused_in_one_line(tmp_path, capsys, coded):
    _coded_folder(tmp_path / "src", 6, 2)

    def error(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(["prepare", *args], one_line_errors=True)
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    src = str(tmp_path / "src")
    refused = error(src, str(tmp_path / "foreign"), "--image_size", "8")
    assert "already holds files that gd prepare did not write (notes.txt" in refused
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    assert "give --image_size N" in error(src, str(tmp_path / "out"))
    assert "chunk_bytes '64 bits' is not a size: give bytes or a size such as 64MB" in error(
        src, str(tmp_path / "out"), "--image_size", "8", "--chunk_bytes", "64 bits")
    assert not (tmp_path / "out").exists()
    assert "is an object-store URL: prepare into a local folder" in error(src, "s3://bucket/x", "--image_size", "8")
    assert "lies inside SRC" in error(src, str(tmp_path / "src" / "out"), "--image_size", "8")
    assert "does not exist" in error(str(tmp_path / "nothing"), str(tmp_path / "out"), "--image_size", "8")
    assert "holds images prepared with other settings (image_size: 8 there, 16 now" in error(
        str(coded.parent / "src"), str(coded), "--image_size", "16")
    before = {p.name: p.stat().st_mtime_ns for p in coded.iterdir()}
    main(["prepare", str(coded.parent / "src"), str(coded), "--image_size", "8"])  # finished: left as it is
    assert {p.name: p.stat().st_mtime_ns for p in coded.iterdir()} == before


def test_on_bad_image_raise_names_the_file_and_keeps_what_was_written(tmp_path):
    _varied_folder(tmp_path / "src")
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*n01_broken\.jpg.*the same command resumes"):
        prepare_images(tmp_path / "src", tmp_path / "out", PrepareOptions(image_size=8, num_workers=1,
                                                                          on_bad_image="raise"))
    assert not manifest_complete(tmp_path / "out")
    with pytest.raises(ValueError, match="unfinished gd prepare run: run the same gd prepare command again"):
        ImageDataModule(dataset="prepared", data_dir=str(tmp_path / "out")).setup("fit")


def manifest_complete(path: Path) -> bool:
    return json.loads((path / MANIFEST_NAME).read_text())["complete"]


def _run_until_chunks(args: list[str], out: Path, chunks: int) -> None:
    """Start ``gd prepare``, and kill its whole process group (as a scheduler does) once ``out`` holds ``chunks``."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("chunk-*.bin"))) < chunks and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not manifest_complete(out), "the run finished before it was killed"


def test_an_interrupted_prepare_resumes_to_the_same_images(tmp_path):
    """Killed twice after some chunks, with unreadable files among the images, then run to the end: every readable
    image written once (LitData alone resumes a worker too early after a skipped file or a second interruption)."""
    src = _coded_folder(tmp_path / "src", 900, 3, size=200)
    for i in range(0, 900, 30):  # 30 unreadable files spread through the list
        (src / f"c{i % 3}" / f"{i:05d}b.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "guided_diffusion", "prepare", str(src), str(out), "--image_size", "8",
            "--num_workers", "2", "--chunk_bytes", "2kB"]
    _run_until_chunks(args, out, 4)
    _run_until_chunks(args, out, len(list(out.glob("chunk-*.bin"))) + 6)
    partial = len(list(out.glob("chunk-*.bin")))
    manifest = prepare_images(src, out, PrepareOptions(image_size=8, num_workers=2, chunk_bytes="2kB"))
    assert manifest.complete and manifest.num_images == 900 and len(manifest.skipped) == 30
    assert partial < len(list(out.glob("*.bin")))
    dataset = StreamingDataset(str(out))
    indices = sorted(dataset[i]["index"] for i in range(len(dataset)))
    readable = [i for i, path in enumerate(sorted(src.rglob("*.png"))) if not path.name.endswith("b.png")]
    assert indices == readable
    assert not (out / ".checkpoints").exists() and not (out / ".gd_skipped").exists()


# ----------------------------------------------------------------------------------------------
# ImageDataModule(dataset="prepared")


def test_the_data_module_streams_prepared_images(coded):
    data = ImageDataModule(dataset="prepared", data_dir=str(coded), image_size=8, batch_size=8, val_fraction=0.25)
    data.setup("fit")
    assert data.num_classes == 3 and data.channels == 3 and data.random_flip
    train = [pair for x, y in data.train_dataloader() for pair in _decode_ids(x) if x.shape == (8, 3, 8, 8)]
    val = [pair for x, y in data.val_dataloader() for pair in _decode_ids(x)]
    assert all(label == index % 3 for index, label in train + val)
    indices = [index for index, _ in train + val]
    assert sorted(indices) == list(range(96))  # a held-out split: disjoint, together all
    assert len(val) == 24
    x, y = next(iter(data.train_dataloader()))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and -1 <= x.min() and x.max() <= 1
    # A smaller network size: the stored square is centre-cropped (resized) at load.
    small = ImageDataModule(dataset="prepared", data_dir=str(coded), image_size=4, batch_size=8, val_fraction=0)
    small.setup("fit")
    assert next(iter(small.train_dataloader()))[0].shape == (8, 3, 4, 4)


def test_prepared_data_that_does_not_fit_is_one_line_before_training(coded, workdir, capsys):
    tmp_path = workdir
    with pytest.raises(ValueError, match="holds 8 px images, smaller than image_size=16: prepare it again"):
        ImageDataModule(dataset="prepared", data_dir=str(coded), image_size=16).setup("fit")
    with pytest.raises(ValueError, match="holds 3-channel images but channels=1"):
        ImageDataModule(dataset="prepared", data_dir=str(coded), image_size=8, channels=1).setup("fit")
    with pytest.raises(FileNotFoundError, match="holds no gd_prepared.json: it was not written by gd prepare"):
        ImageDataModule(dataset="prepared", data_dir=str(tmp_path), image_size=8).setup("fit")
    # The network's class count, through gd fit: refused before anything is written.
    args = ["fit", "--config", str(CONFIGS / "mnist" / "classifier.yaml"), "--data.dataset", "prepared",
            "--data.data_dir", str(coded), "--data.image_size", "8", "--model.init_args.network.image_size", "8",
            "--model.init_args.network.in_channels", "3", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit):
        main(args, one_line_errors=True)
    assert capsys.readouterr().err.strip() == ("gd fit: error: the data has 3 classes but the network was built for "
                                               "num_classes=10")
    assert not (tmp_path / "run").exists()


class _Record(L.LightningModule):
    """Writes the (index, class) of every training batch to ``log`` (one JSON line per step); SIGTERM at
    ``stop_at`` (a cluster's pre-emption)."""

    def __init__(self, log: str, stop_at: int | None = None):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.log_file, self.stop_at = log, stop_at

    def training_step(self, batch, batch_idx):
        x, y = batch
        ids = _decode_ids(x)
        assert [label for _, label in ids] == y.tolist()
        with open(f"{self.log_file}.{self.global_rank}", "a") as file:
            file.write(json.dumps([index for index, _ in ids]) + "\n")
        if self.stop_at is not None and self.global_step + 1 == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.layer(x.mean().reshape(1, 1)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(tmp_path: Path, steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=0, **kwargs)


def _lines(path: str) -> list[list[int]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_two_ddp_ranks_see_every_sample_once_per_epoch(coded, tmp_path):
    data = ImageDataModule(dataset="prepared", data_dir=str(coded), image_size=8, batch_size=4, val_fraction=0,
                           num_workers=1)
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60))
    trainer = _trainer(tmp_path, steps=24, devices=2, strategy=strategy, enable_checkpointing=False)
    trainer.fit(_Record(str(tmp_path / "seen")), datamodule=data)
    rank0, rank1 = _lines(str(tmp_path / "seen.0")), _lines(str(tmp_path / "seen.1"))
    assert len(rank0) == len(rank1) == 24  # two epochs of 12 steps
    for epoch in (slice(0, 12), slice(12, 24)):
        first, second = sum(rank0[epoch], []), sum(rank1[epoch], [])
        assert not set(first) & set(second)
        assert sorted(first + second) == list(range(96))
    assert sum(rank0[:12], []) != sum(rank0[12:], [])  # reshuffled every epoch


@pytest.mark.parametrize("stop_at", [5, 31])  # in the first epoch (of 18 steps), and in the second
def test_a_run_stopped_mid_epoch_resumes_with_exactly_the_samples_of_an_uninterrupted_run(coded, tmp_path, stop_at):
    def data():
        return ImageDataModule(dataset="prepared", data_dir=str(coded), image_size=8, batch_size=4, num_workers=2,
                               val_fraction=0.25)

    _trainer(tmp_path / "whole", steps=40, enable_checkpointing=False).fit(
        _Record(str(tmp_path / "whole.log")), datamodule=data())
    checkpoints = RunCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    with pytest.raises(SIGTERMException):
        _trainer(tmp_path / "parts", steps=40, callbacks=[checkpoints]).fit(
            _Record(str(tmp_path / "parts.log"), stop_at=stop_at), datamodule=data())
    assert len(_lines(str(tmp_path / "parts.log.0"))) == stop_at
    _trainer(tmp_path / "parts", steps=40, callbacks=[RunCheckpoint(dirpath=str(tmp_path / "ckpt"))]).fit(
        _Record(str(tmp_path / "parts.log")), datamodule=data(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    whole, parts = _lines(str(tmp_path / "whole.log.0")), _lines(str(tmp_path / "parts.log.0"))
    assert len(whole) == 40 and parts == whole
    assert sorted(sum(whole[:18], [])) == sorted(sum(whole[18:36], []))  # an epoch: the 72 training images


def test_gd_fit_three_steps_from_prepared_data_keeps_the_loader_state(workdir):
    root = _coded_folder(workdir / "src", 40, 10, size=32)
    prepare_images(root, workdir / "prepared", PrepareOptions(image_size=32, channels=1, num_workers=1))
    overrides = workdir / "tiny.yaml"
    overrides.write_text(yaml.safe_dump({
        "trainer": {"max_steps": 3, "logger": False, "enable_progress_bar": False,
                    "callbacks": [{"class_path": "guided_diffusion.training.RunCheckpoint",
                                   "init_args": {"dirpath": "run/checkpoints", "save_last": True}}]},
        "data": {"dataset": "prepared", "data_dir": str(workdir / "prepared"), "batch_size": 4, "val_fraction": 0}}))
    main(["fit", "--config", str(CONFIGS / "mnist" / "diffusion.yaml"), "--config", str(overrides)])
    checkpoint = torch.load(workdir / "run" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 3
    loader_state = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["num_samples_yielded"] == 12 and loader_state["current_epoch"] == 1


def test_chunk_size_and_manifests_of_object_store_urls(coded, monkeypatch):
    from guided_diffusion.data import prepared

    assert default_chunk_bytes(1_281_167, 64, 3) == 64_000_000  # ImageNet at 64 px: LitData's 64 MB
    assert default_chunk_bytes(2000, 64, 3) == 1_000_000  # a small set: 1/64 of it, at least 1 MB
    assert default_chunk_bytes(20_000, 64, 3) == 20_000 * 64 * 64 * 3 // 64

    class Bucket:  # an object store holding the prepared folder under s3://bucket/set
        def __init__(self, url, storage_options):
            assert url == "s3://bucket/set/gd_prepared.json" and storage_options == {}

        def download_file(self, remote, local):
            Path(local).write_bytes((coded / remote.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr("litdata.streaming.fs_provider._get_fs_provider", Bucket)
    assert prepared.is_remote("s3://bucket/set") and not prepared.is_remote("data/s3:/set")
    assert read_manifest("s3://bucket/set") == read_manifest(coded)
    data = ImageDataModule(dataset="prepared", data_dir="s3://bucket/set", image_size=8)  # no local folder check
    data.setup("fit")
    assert data.num_classes == 3


def test_chunk_sizes_parse_as_litdata_reads_them():
    assert parse_bytes("64MB") == parse_bytes("64mb") == parse_bytes(64_000_000) == 64_000_000
    assert parse_bytes("2kB") == 2000 and parse_bytes("1.5g") == 1_500_000_000 and parse_bytes("1e6") == 1_000_000
    for bad in ("0", "-5MB", "MB", "nan", "64 bits"):
        with pytest.raises(ValueError, match="is not a size"):
            parse_bytes(bad)


@pytest.mark.parametrize("world", ["3 nodes x 2 ranks", "a parallel filesystem"])
def test_every_sample_once_per_epoch_on_several_nodes_and_parallel_filesystems(coded, monkeypatch, world):
    """Three epochs on each rank of a world LitData alone gets wrong: on several nodes it reads some samples twice
    and gives ranks different counts from the second epoch (chunks straddling two nodes), and on a parallel
    filesystem its window shuffle leaves out 16 of the 96 samples; the prepared set keeps one global shuffle."""
    from litdata.utilities.env import _DistributedEnv

    if world == "3 nodes x 2 ranks":  # what LitData detects on 3 GPU nodes x 2 GPUs
        world_size, nodes, workers, batch = 6, 3, 0, 4
    else:  # what LitData does on NFS / Lustre / GPFS mounts
        monkeypatch.setenv("LITDATA_POSIX_FAST", "1")
        world_size, nodes, workers, batch = 2, 1, 2, 4
    epochs = {}
    for rank in range(world_size):
        env = _DistributedEnv(world_size, rank, nodes)
        monkeypatch.setattr(_DistributedEnv, "detect", classmethod(lambda cls, env=env: env))
        data = ImageDataModule(dataset="prepared", data_dir=str(coded), image_size=8, batch_size=batch,
                               num_workers=workers, val_fraction=0)
        loader = data.train_dataloader()
        epochs[rank] = [[index for x, _ in loader for index, _ in _decode_ids(x)] for _ in range(3)]
    for epoch in range(3):
        assert [len(epochs[rank][epoch]) for rank in range(world_size)] == [96 // world_size] * world_size, epoch
        assert sorted(sum((epochs[rank][epoch] for rank in range(world_size)), [])) == list(range(96)), epoch


def test_a_checkpoint_of_other_data_or_seed_is_refused_in_one_line(coded):
    def loader(seed):
        return ImageDataModule(dataset="prepared", data_dir=str(coded), image_size=8, batch_size=4, val_fraction=0,
                               split_seed=seed).train_dataloader()

    trained = loader(0)
    iterator = iter(trained)
    next(iterator)
    state = trained.state_dict()
    with pytest.raises(ValueError, match=r"read other data \(seed 0 there, 1 now\): resume with the data.data_dir"):
        loader(1).load_state_dict(state)
    resumed = loader(0)
    resumed.load_state_dict(state)  # the same data and seed: accepted
    assert len(next(iter(resumed))[0]) == 4


def test_splits_and_batches_that_leave_nothing_are_one_line(coded):
    with pytest.raises(ValueError, match="val_fraction=0.001 of the 96 images .* holds out none"):
        ImageDataModule(dataset="prepared", data_dir=str(coded), image_size=8, val_fraction=0.001).setup("fit")
    data = ImageDataModule(dataset="prepared", data_dir=str(coded), image_size=8, batch_size=80, val_fraction=0.5)
    data.setup("fit")
    with pytest.raises(ValueError, match="gives no full batch of 80 to every rank and loader worker"):
        data.train_dataloader()
