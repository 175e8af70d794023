"""Prepared images: ADM's pre-processing applied once, stored as LitData-optimized chunks, streamed to every rank.

guided-diffusion decodes and resizes every JPEG on every epoch. At 64 px that is the bottleneck of a multi-GPU
node, and on a cluster the shared filesystem is too. :func:`prepare_images` (``gd prepare SRC DEST``) decodes each
image once, applies :func:`~.datasets.center_crop_arr` (box-halve, bicubic resize of the short side, centre crop)
and writes the uint8 pixels, the label and the image's position in the sorted file list into LitData chunks
(``litdata.optimize``: parallel workers, checkpointed, so an interrupted run resumes where it stopped). The chunks
are read by :func:`prepared_images`, a ``litdata.StreamingDataset`` from a local folder or an object store
(``s3://``, ``gs://``): every rank and node streams its own share of the chunks, each sample once per epoch, and a
``litdata.StreamingDataLoader``'s ``state_dict`` (kept in Lightning checkpoints) resumes mid-epoch exactly.

Beside LitData's ``index.json`` the folder holds :data:`MANIFEST_NAME`, the :class:`PreparedManifest`: the
settings, the class names and counts, the unreadable files that were skipped, and whether the set is complete.

Random crops (the classifier recipe): prepare at a larger side, e.g. ``ceil(64 / 0.8) = 80`` for 64 px, and the
loader applies :func:`~.datasets.random_crop_arr` to the stored square (short side resized to a random size in
[64, 80], random 64 px crop). ADM crops from the whole, non-square image; a prepared set keeps its centre square,
so a crop never reaches into the long side's margins.

Plain PyTorch + PIL + LitData; nothing here imports Lightning.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import litdata
import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset, train_test_split

from ..atomic import atomic_write_json, check_output_directory
from .datasets import (
    BAD_IMAGE_ERRORS,
    BadImagePolicy,
    ImageTransform,
    LabelSource,
    UnreadableImageError,
    center_crop_arr,
    decode_image,
    folder_labels,
    list_image_files,
)

log = logging.getLogger(__name__)

#: The manifest beside LitData's ``index.json``.
MANIFEST_NAME = "gd_prepared.json"
FORMAT = "guided-diffusion/prepared-images"
FORMAT_VERSION = 1
#: Where the workers of an unfinished run record the files they skipped (removed when the run completes).
SKIPPED_DIR = ".gd_skipped"
#: Seed of the order the images are written in (a random mix of classes in every chunk).
WRITE_ORDER_SEED = 0
MB = 1_000_000
#: URL schemes read through LitData (object stores).
REMOTE_SCHEMES = ("s3", "gs", "r2", "azure", "hf")


def is_remote(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an object-store URL (``s3://bucket/path``) rather than a local folder."""
    match = re.match(r"^([a-z0-9]+)://", str(location))
    return bool(match) and match[1] in REMOTE_SCHEMES


@dataclass(frozen=True)
class PreparedManifest:
    """What a prepared folder holds (``gd_prepared.json``).

    Args:
        image_size: side of the stored square images.
        channels: 3 (RGB) or 1 (grey-scale); every source image was converted to that mode.
        labels_from: how the labels were read from the source folder (``directory`` / ``filename`` / ``none``).
        class_names: class index -> name.
        num_source_files: image files found under ``source``.
        files_sha256: hash of the sorted relative paths of those files (a resumed run must see the same list).
        source: the source folder (absolute path).
        num_images: images written (source files minus skipped ones; 0 until complete).
        class_counts: images written per class (empty until complete).
        skipped: unreadable source files that were skipped (relative paths).
        complete: all source files were processed and the chunks' ``index.json`` is written.
        num_workers: worker processes of the run (LitData resumes an interrupted run only with as many).
    """

    image_size: int
    channels: int
    labels_from: str
    class_names: tuple[str, ...]
    num_source_files: int
    files_sha256: str
    source: str
    num_images: int = 0
    class_counts: tuple[int, ...] = ()
    skipped: tuple[str, ...] = ()
    complete: bool = False
    num_workers: int = 0

    #: Fields that make two runs of ``gd prepare`` the same job (a resumed run must match them).
    SETTINGS = ("image_size", "channels", "labels_from", "class_names", "num_source_files", "files_sha256",
                "source")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, payload: Any, where: str) -> "PreparedManifest":
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{where} is not a manifest of gd prepare")
        if payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"{where} has format version {payload.get('version')}; this version reads "
                             f"{FORMAT_VERSION}: prepare the images again")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            values = {key: value for key, value in payload.items() if key in names}
            for key in ("class_names", "class_counts", "skipped"):
                values[key] = tuple(values.get(key, ()))
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"{where} is incomplete ({error})") from None

    def differences(self, other: "PreparedManifest") -> list[str]:
        """The settings in which ``other`` differs from this one (``name: ours != theirs``)."""
        shown = {"class_names": lambda names: f"{len(names)} classes", "files_sha256": lambda value: value[:12]}
        out = []
        for name in self.SETTINGS:
            ours, theirs = getattr(self, name), getattr(other, name)
            if ours != theirs:
                show = shown.get(name, repr)
                out.append(f"{name}: {show(theirs)} there, {show(ours)} now")
        return out


def read_manifest(data_dir: str | os.PathLike, storage_options: Optional[dict] = None) -> PreparedManifest:
    """The manifest of a prepared folder or object-store URL; ``ValueError`` / ``FileNotFoundError`` in one line
    for a folder that ``gd prepare`` did not write or did not finish."""
    where = f"{str(data_dir).rstrip('/')}/{MANIFEST_NAME}"
    if is_remote(data_dir):
        text = _download_text(where, storage_options or {})
    else:
        path = Path(data_dir) / MANIFEST_NAME
        if not Path(data_dir).is_dir():
            raise FileNotFoundError(f"prepared data {str(data_dir)!r} does not exist (or is not a directory)")
        if not path.is_file():
            raise FileNotFoundError(f"{str(data_dir)!r} holds no {MANIFEST_NAME}: it was not written by gd prepare "
                                    "(gd prepare SRC DEST --image_size N makes one)")
        text = path.read_text()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON ({error})") from None
    manifest = PreparedManifest.from_json(payload, where)
    if not manifest.complete:
        raise ValueError(f"{str(data_dir)!r} is an unfinished gd prepare run: run the same gd prepare command again "
                         "to finish it")
    return manifest


def _download_text(url: str, storage_options: dict) -> str:
    from litdata.streaming.fs_provider import _get_fs_provider

    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, MANIFEST_NAME)
        try:
            _get_fs_provider(url, storage_options).download_file(url, local)
            return Path(local).read_text()
        except (OSError, ValueError) as error:
            raise FileNotFoundError(f"cannot read {url} ({type(error).__name__}: {error}): is it a folder gd "
                                    "prepare wrote (and uploaded)?") from None


# ----------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class _PrepareItem:
    """``(index, path, label) -> {"image", "label", "index"}`` in a LitData worker (``None``: skipped)."""

    image_size: int
    mode: str
    on_bad_image: BadImagePolicy
    skipped_log: str

    def __call__(self, item: Sequence) -> Optional[dict[str, Any]]:
        index, path, label = item
        try:
            image = decode_image(path, self.mode)
        except BAD_IMAGE_ERRORS as error:
            if self.on_bad_image == "raise":
                raise UnreadableImageError(f"cannot read image {path}: {error} (give --on_bad_image skip to skip "
                                           "such files)") from None
            log.warning("skipping unreadable image %s (%s: %s)", path, type(error).__name__, error)
            with open(os.path.join(self.skipped_log, f"{os.getpid()}.txt"), "a") as file:
                file.write(path + "\n")
            return None
        return {"image": np.ascontiguousarray(center_crop_arr(image, self.image_size)), "label": int(label),
                "index": int(index)}


def default_chunk_bytes(num_images: int, image_size: int, channels: int) -> int:
    """LitData's recommended 64 MB, or 1/64 of the set (at least 1 MB) when that is smaller: a small set still makes
    enough chunks for every loader worker of every rank to stream several (ImageNet at 64 px: 15.7 GB, 64 MB)."""
    total = num_images * image_size * image_size * channels
    return int(min(64 * MB, max(MB, total // 64)))


def _files_sha256(files: Sequence[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
    return digest.hexdigest()


def _check_destination(dest: Path, planned: PreparedManifest) -> Optional[PreparedManifest]:
    """The manifest already in ``dest`` if it is this job (to resume or finish), ``None`` for a new or empty
    folder; ``ValueError`` in one line when ``dest`` holds anything else."""
    check_output_directory(dest, "DEST")
    if not dest.exists() or not any(dest.iterdir()):
        return None
    path = dest / MANIFEST_NAME
    if not path.is_file():
        shown = ", ".join(sorted(p.name for p in dest.iterdir())[:3])
        raise ValueError(f"DEST {str(dest)!r} already holds files that gd prepare did not write ({shown}...): choose "
                         "a new or empty folder")
    try:
        found = PreparedManifest.from_json(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): choose a new or empty folder") from None
    differences = planned.differences(found)
    if differences:
        raise ValueError(f"DEST {str(dest)!r} holds images prepared with other settings ({'; '.join(differences)}): "
                         "choose a new or empty folder")
    return found


def _raised_unreadable(error: BaseException) -> Optional[str]:
    """The message of an :class:`UnreadableImageError` a LitData worker raised (it reaches us as text)."""
    match = re.search(r"UnreadableImageError: (cannot read image .*)", str(error))
    return match[1].strip() if match else None


def _written_count(dest: Path) -> int:
    index = json.loads((dest / "index.json").read_text())
    return sum(int(chunk["chunk_size"]) for chunk in index["chunks"])


def prepare_images(src: str | os.PathLike, dest: str | os.PathLike, image_size: int,
                   labels_from: LabelSource = "directory", channels: Literal[1, 3] = 3,
                   num_workers: Optional[int] = None, on_bad_image: BadImagePolicy = "skip",
                   classes_from: Optional[str | os.PathLike] = None, chunk_bytes: Optional[str | int] = None,
                   verbose: bool = False) -> PreparedManifest:
    """Prepare the images under ``src`` into ``dest`` once (see the module docstring); returns the manifest.

    Args:
        src: an image folder (``labels_from="directory"``: one sub-folder per class).
        dest: a new or empty local folder, or one an interrupted run of the same job left (it resumes).
        image_size: side of the stored images (the network's, or larger for random crops).
        labels_from: a file's class: its sub-folder, its file-name prefix before ``_``, or none.
        channels: 3 (RGB) or 1 (grey-scale).
        num_workers: processes decoding in parallel (default: the CPU count).
        on_bad_image: ``"skip"`` unreadable files (warned about, counted and listed in the manifest) or
            ``"raise"`` (the run stops naming the file; what was written is kept and a re-run resumes).
        classes_from: a prepared folder whose class names (and so class indices) this set takes: a validation
            set prepared with the training set's classes.
        chunk_bytes: size of a LitData chunk (``"64MB"`` or bytes); default :func:`default_chunk_bytes`.
        verbose: show LitData's progress.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if is_remote(dest):
        raise ValueError(f"DEST {str(dest)!r} is an object-store URL: prepare into a local folder (a re-run resumes "
                         "it there), then upload the folder (e.g. aws s3 sync DEST s3://...); training reads the URL")
    src, dest = Path(src).resolve(), Path(dest).resolve()
    if dest == src or src in dest.parents:
        raise ValueError(f"DEST {str(dest)!r} lies inside SRC {str(src)!r}: its chunks would be read as source "
                         "files by a re-run; choose a folder outside SRC")
    known_classes = read_manifest(classes_from).class_names if classes_from is not None else None
    files = list_image_files(src)
    labels, class_names = folder_labels(files, src, labels_from, known_classes)
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(files)))
    planned = PreparedManifest(image_size=image_size, channels=channels, labels_from=labels_from,
                               class_names=tuple(class_names), num_source_files=len(files),
                               files_sha256=_files_sha256(files, src), source=str(src), num_workers=workers)
    found = _check_destination(dest, planned)
    if found is not None and found.complete:
        log.info("%s is already prepared (%d images)", dest, found.num_images)
        return found
    if found is not None and found.num_workers and found.num_workers != workers:
        log.warning("resuming with the %d workers the interrupted run had (LitData resumes only so)",
                    found.num_workers)
        planned = dataclasses.replace(planned, num_workers=found.num_workers)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dest / MANIFEST_NAME, planned.to_json())
    skipped_log = dest / SKIPPED_DIR
    skipped_log.mkdir(exist_ok=True)
    if not (dest / "index.json").is_file():  # else: an earlier run wrote every chunk but stopped before the manifest
        work = _PrepareItem(image_size, "RGB" if channels == 3 else "L", on_bad_image, str(skipped_log))
        # In a seeded random order, so that every chunk (and so every stretch of the stream, which LitData shuffles
        # by chunk and by blocks of 256 within a chunk) mixes the classes instead of holding a class-sorted run.
        # Lists, not tuples: LitData compares them with its checkpoint's JSON copy to resume.
        order = np.random.default_rng(WRITE_ORDER_SEED).permutation(len(files))
        inputs = [[int(i), str(files[i]), labels[i]] for i in order]
        try:
            chunk_bytes = chunk_bytes or default_chunk_bytes(len(files), image_size, channels)
            litdata.optimize(fn=work, inputs=inputs, output_dir=str(dest), chunk_bytes=chunk_bytes,
                             num_workers=planned.num_workers, use_checkpoint=True,
                             reorder_files=False, verbose=verbose)
        except RuntimeError as error:
            message = _raised_unreadable(error)
            if message is None:
                raise
            raise UnreadableImageError(f"{message}; what was prepared is kept: the same command resumes") from None
    skipped = sorted({line for log_file in skipped_log.glob("*.txt") for line in log_file.read_text().splitlines()
                      if line})
    skipped_set = set(skipped)
    counts = Counter(label for path, label in zip(files, labels) if str(path) not in skipped_set)
    written = _written_count(dest)
    if written != len(files) - len(skipped):
        raise RuntimeError(f"{dest}: {written} images written, but {len(files)} files minus {len(skipped)} skipped "
                           f"= {len(files) - len(skipped)}: prepare again into a new folder")
    manifest = dataclasses.replace(
        planned, num_images=written, class_counts=tuple(counts.get(i, 0) for i in range(len(class_names))),
        skipped=tuple(str(Path(path).relative_to(src)) for path in skipped), complete=True)
    atomic_write_json(dest / MANIFEST_NAME, manifest.to_json())
    shutil.rmtree(skipped_log, ignore_errors=True)
    shutil.rmtree(dest / ".checkpoints", ignore_errors=True)
    if skipped:
        log.warning("%d unreadable image(s) skipped; they are listed in %s", len(skipped), dest / MANIFEST_NAME)
    return manifest


# ----------------------------------------------------------------------------------------------
# Reading


class _ItemTransform:
    """A stored item -> ``(image tensor in [-1, 1], label)`` through an :class:`~.datasets.ImageTransform`."""

    def __init__(self, transform: ImageTransform):
        self.transform = transform

    def __call__(self, item: dict[str, Any]) -> tuple[torch.Tensor, int]:
        return self.transform(item["image"]), int(item["label"])


def prepared_images(data_dir: str, transform: ImageTransform, *, shuffle: bool, drop_last: bool, seed: int = 0,
                    val_fraction: float = 0.0, split: Literal["train", "val"] = "train",
                    storage_options: Optional[dict] = None):
    """The ``litdata.StreamingDataset`` of a prepared folder or URL, yielding ``(image, label)`` batches' items.

    Build it in the process that iterates it, after ``torch.distributed`` is initialised (LitData reads the world
    size and rank when the dataset is made): each rank then streams its own share, each sample once per epoch
    (``drop_last``: every rank the same count; the remainder of an epoch is left out).

    Args:
        data_dir: the prepared folder or object-store URL.
        transform: crop / flip and scaling to [-1, 1].
        shuffle: shuffle chunks and samples, differently every epoch (the same on every rank: ``seed``).
        drop_last: equal sample counts on every rank.
        seed: the shuffle's seed (and of the ``val_fraction`` split).
        val_fraction: hold this fraction out (a deterministic split by ``seed``); ``split`` picks the part.
        split: ``"train"`` or ``"val"`` part of a ``val_fraction`` split.
        storage_options: credentials etc. of an object store (LitData's ``storage_options``).
    """
    dataset = StreamingDataset(str(data_dir), shuffle=shuffle, drop_last=drop_last, seed=seed,
                               storage_options=storage_options or {}, transform=_ItemTransform(transform))
    if val_fraction <= 0:
        return dataset
    train, val = train_test_split(dataset, splits=[1.0 - val_fraction, val_fraction], seed=seed)
    return train if split == "train" else val


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays turned into Python numbers and lists (recursively)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


class PreparedLoader(StreamingDataLoader):
    """``litdata.StreamingDataLoader`` whose :meth:`state_dict` (how far the epoch got, kept in Lightning's
    checkpoints) holds plain Python values: LitData leaves NumPy integers in it, which the ``weights_only=True``
    load of a checkpoint refuses."""

    def state_dict(self) -> dict[str, Any]:
        return _plain(super().state_dict())


__all__ = ["MANIFEST_NAME", "PreparedLoader", "PreparedManifest", "default_chunk_bytes", "is_remote", "prepare_images",
           "prepared_images", "read_manifest"]
