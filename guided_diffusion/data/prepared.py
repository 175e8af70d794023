"""Prepared images: ``gd prepare``'s LitData chunks, streamed to every rank and node, resumable mid-epoch.

:mod:`.prepare` writes a folder of chunks once (ADM's pre-processing, uint8) with a manifest,
:data:`MANIFEST_NAME` (:class:`PreparedManifest`: the settings, the class names and counts, the skipped files, and
whether the set is complete). :func:`prepared_images` reads it as a ``litdata.StreamingDataset`` from the local
folder or an object store it was uploaded to (``s3://``; ``gs://`` and ``r2://`` with their SDKs): every rank
streams its own share, each sample once per epoch, and :class:`PreparedLoader`'s ``state_dict`` (kept in
Lightning checkpoints) resumes the epoch where it stopped, on the same samples in the same order.

Random crops (the classifier recipe): prepare at a larger side, e.g. ``ceil(64 / 0.8) = 80`` for 64 px, and the
loader applies :func:`~.datasets.random_crop_arr` to the stored square (short side resized to a random size in
[64, 80], random 64 px crop). ADM crops from the whole, non-square image; a prepared set keeps its centre square,
so a crop never reaches into the long side's margins.

Plain PyTorch + LitData; nothing here imports Lightning.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch

# LitData 0.2.76 asks PyPI for a newer version only when told to; never from here (no network at run time).
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
# LitData lowers a loader's num_workers when a machine has little free memory. Ranks must agree on it (LitData
# splits the samples by rank x worker) and a resume must see the same: data.num_workers is taken as given.
os.environ.setdefault("LITDATA_POSIX_MAX_WORKERS", "0")
import litdata  # noqa: E402
from litdata import StreamingDataLoader, StreamingDataset, train_test_split  # noqa: E402
from litdata.utilities.env import _DistributedEnv  # noqa: E402

from .datasets import ImageTransform  # noqa: E402

log = logging.getLogger(__name__)

#: The manifest beside LitData's ``index.json``.
MANIFEST_NAME = "gd_prepared.json"
FORMAT = "guided-diffusion/prepared-images"
FORMAT_VERSION = 1
#: URL schemes of the object stores LitData reads (``gs://`` needs google-cloud-storage installed).
REMOTE_SCHEMES = ("s3", "gs", "r2")


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
        except Exception as error:  # noqa: BLE001  (boto3 / the cloud SDKs raise their own types: named here)
            reason = " ".join(f"{type(error).__name__}: {error}".split())
            raise FileNotFoundError(f"cannot read {url} ({reason}): is it a folder gd prepare wrote (uploaded), "
                                    "and are the store's credentials set?") from None


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
    _one_global_shuffle(dataset)
    if val_fraction <= 0:
        return dataset
    train, val = train_test_split(dataset, splits=[1.0 - val_fraction, val_fraction], seed=seed)
    return train if split == "train" else val


def _one_global_shuffle(dataset: StreamingDataset) -> None:
    """Make LitData assign samples to ranks by one global shuffle every epoch, as it does on one node.

    On several nodes LitData 0.2.76 keeps each node on the chunks it read in epoch 1 (for its cache) and from
    epoch 2 hands them out whole within the node: chunks that straddled two nodes are then read by both, and the
    ranks of different nodes get different sample counts (a hang at the epoch's end). On a parallel filesystem
    (NFS, Lustre, GPFS, ...) it switches to a "window" shuffle that gives whole chunks to loader workers and cuts
    every worker to the smallest one's share. Both break "each sample once per epoch, the same count on every
    rank", so the dataset sees the world as one node and keeps the global shuffle (chunks are still read in place
    or cached; only the assignment changes).
    """
    env = dataset.distributed_env
    dataset.distributed_env = _DistributedEnv(env.world_size, env.global_rank, 1)
    if dataset.posix_fast is not None and dataset.posix_fast.window_shuffle:
        dataset.posix_fast = None


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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the epoch; a checkpoint of another data folder or shuffle seed is refused in one line (LitData would
        fail inside a loader worker)."""
        saved = state.get("dataset") or {}
        ours = {"data": self.dataset.input_dir.url or self.dataset.input_dir.path, "seed": self.dataset.seed}
        theirs = {"data": saved.get("input_dir_url") or saved.get("input_dir_path"), "seed": saved.get("seed")}
        changed = [f"{key} {theirs[key]!r} there, {ours[key]!r} now" for key in ours
                   if theirs[key] is not None and theirs[key] != ours[key]]
        if changed:
            raise ValueError(f"the checkpoint's training loader read other data ({'; '.join(changed)}): resume with "
                             "the data.data_dir and data.split_seed it was trained with")
        super().load_state_dict(state)


__all__ = ["MANIFEST_NAME", "PreparedLoader", "PreparedManifest", "is_remote", "litdata", "prepared_images",
           "read_manifest"]
