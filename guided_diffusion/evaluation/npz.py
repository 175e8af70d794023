"""Reading ADM-layout ``.npz`` sample files and reference batches, streamed in batches.

Layout (what the ADM sampling scripts write and ``evaluations/evaluator.py`` reads):

- ``arr_0``: uint8 images, NHWC, C in {1, 3} (the evaluator needs RGB; grey is repeated to RGB),
- ``arr_1``: optional integer class labels, shape (N,),
- reference batches published with the ADM suite (``VIRTUAL_imagenet64_labeled.npz`` ...) also hold
  the reference Inception statistics ``mu``/``sigma`` (pool_3, FID) and ``mu_s``/``sigma_s``
  (mixed_6/conv, sFID). The evaluator uses them instead of statistics of ``arr_0`` when ``mu`` exists.

Images are never loaded whole: :func:`iter_image_batches` reads the ``arr_0.npy`` member of the zip
archive chunk by chunk (works for ``np.savez`` and ``np.savez_compressed``), so 50k-image reference
batches stream in constant memory. Every problem is reported as a ValueError naming the file.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from .metrics import FeatureStatistics

IMAGE_KEY = "arr_0"
LABEL_KEY = "arr_1"
STATISTICS_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}


@dataclass(frozen=True)
class ArrayHeader:
    """Shape and dtype of one array in an ``.npz``, read from its ``.npy`` header only."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool


@dataclass(frozen=True)
class NpzInfo:
    """What an ``.npz`` holds, from headers only (no image data read)."""

    path: Path
    keys: tuple[str, ...]
    images: ArrayHeader | None
    labels: ArrayHeader | None
    statistics: tuple[str, ...]  # which of "pool"/"spatial" statistics are stored

    @property
    def num_images(self) -> int:
        return self.images.shape[0] if self.images is not None else 0


def _read_header(stream: IO[bytes]) -> ArrayHeader | None:
    """Parse a ``.npy`` header; None for a format version this reader does not stream."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        return None
    return ArrayHeader(tuple(shape), np.dtype(dtype), bool(fortran_order))


def _open_archive(path: str | os.PathLike) -> tuple[Path, zipfile.ZipFile]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No such .npz file: {path}")
    try:
        return path, zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not an .npz archive (np.savez/np.savez_compressed output).") from error


def _array_header(archive: zipfile.ZipFile, key: str, path: Path) -> ArrayHeader:
    with archive.open(f"{key}.npy") as stream:
        header = _read_header(stream)
    if header is None:  # unusual .npy version: fall back to numpy's own loader for the header
        with np.load(path, allow_pickle=False) as data:
            array = data[key]
            header = ArrayHeader(array.shape, array.dtype, bool(np.isfortran(array)))
    return header


def validate_image_header(header: ArrayHeader, where: str) -> None:
    """uint8, 4-D NHWC, C in {1, 3}; otherwise a ValueError that says what to change."""
    shape, dtype = header.shape, header.dtype
    if dtype != np.uint8:
        raise ValueError(
            f"{where}: '{IMAGE_KEY}' has dtype {dtype}, expected uint8 images in 0..255 (convert model "
            "outputs in [-1, 1] with ((x + 1) * 127.5).clip(0, 255).astype(np.uint8))."
        )
    if len(shape) != 4:
        raise ValueError(f"{where}: '{IMAGE_KEY}' has shape {shape}, expected 4-D NHWC images (N, H, W, C).")
    if shape[3] not in (1, 3):
        if shape[1] in (1, 3):
            raise ValueError(
                f"{where}: '{IMAGE_KEY}' has shape {shape}, which looks like NCHW; the ADM layout is NHWC "
                "(N, H, W, C): transpose with images.transpose(0, 2, 3, 1)."
            )
        raise ValueError(f"{where}: '{IMAGE_KEY}' has {shape[3]} channels (shape {shape}); "
                         "expected 1 or 3 (NHWC).")
    if shape[0] == 0:
        raise ValueError(f"{where}: '{IMAGE_KEY}' holds no images.")


def inspect_npz(path: str | os.PathLike) -> NpzInfo:
    """Read the headers of an ADM ``.npz`` and validate them.

    Raises:
        FileNotFoundError: missing file.
        ValueError: not a zip/npz; neither ``arr_0`` nor ``mu``/``sigma`` statistics; bad image dtype or
            layout; statistics with a missing partner key or inconsistent shapes.
    """
    path, archive = _open_archive(path)
    with archive:
        keys = tuple(sorted(name[:-4] for name in archive.namelist() if name.endswith(".npy")))
        statistics = []
        for kind, (mean_key, cov_key) in STATISTICS_KEYS.items():
            if (mean_key in keys) != (cov_key in keys):
                raise ValueError(f"{path}: has '{mean_key if mean_key in keys else cov_key}' without its "
                                 f"partner ('{mean_key}' and '{cov_key}' go together).")
            if mean_key in keys:
                statistics.append(kind)
        if IMAGE_KEY not in keys and not statistics:
            raise ValueError(
                f"{path}: no '{IMAGE_KEY}' image array (keys: {list(keys)}). Expected the ADM layout: "
                f"'{IMAGE_KEY}' uint8 NHWC images (+ optional '{LABEL_KEY}' labels), or reference statistics "
                "'mu'/'sigma' (and 'mu_s'/'sigma_s')."
            )
        images = _array_header(archive, IMAGE_KEY, path) if IMAGE_KEY in keys else None
        labels = _array_header(archive, LABEL_KEY, path) if LABEL_KEY in keys else None
    if images is not None:
        validate_image_header(images, str(path))
    if labels is not None and images is not None and labels.shape != (images.shape[0],):
        raise ValueError(f"{path}: '{LABEL_KEY}' has shape {labels.shape}, expected ({images.shape[0]},) "
                         "labels, one per image.")
    return NpzInfo(path, keys, images, labels, tuple(statistics))


def iter_image_batches(path: str | os.PathLike, batch_size: int = 64,
                       limit: int | None = None) -> Iterator[np.ndarray]:
    """Yield uint8 NHWC batches of ``arr_0`` (at most ``limit`` images), reading the file incrementally."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    info = inspect_npz(path)
    if info.images is None:
        raise ValueError(f"{info.path}: no '{IMAGE_KEY}' images to read (it holds only statistics).")
    header = info.images
    total = header.shape[0] if limit is None else min(limit, header.shape[0])
    if header.fortran_order:  # rare: not streamable row by row
        with np.load(info.path, allow_pickle=False) as data:
            images = np.ascontiguousarray(data[IMAGE_KEY][:total])
        for start in range(0, total, batch_size):
            yield images[start:start + batch_size]
        return
    image_bytes = int(np.prod(header.shape[1:])) * header.dtype.itemsize
    with zipfile.ZipFile(info.path) as archive, archive.open(f"{IMAGE_KEY}.npy") as stream:
        if _read_header(stream) is None:
            raise ValueError(f"{info.path}: unsupported .npy format version for streaming '{IMAGE_KEY}'.")
        for start in range(0, total, batch_size):
            count = min(batch_size, total - start)
            data = stream.read(count * image_bytes)
            if len(data) != count * image_bytes:
                raise ValueError(f"{info.path}: '{IMAGE_KEY}' is truncated "
                                 f"(expected {header.shape[0]} images).")
            yield np.frombuffer(bytearray(data), dtype=header.dtype).reshape((count, *header.shape[1:]))


def read_labels(path: str | os.PathLike) -> np.ndarray | None:
    """``arr_1`` as int64 (None when absent)."""
    info = inspect_npz(path)
    if info.labels is None:
        return None
    if not np.issubdtype(info.labels.dtype, np.integer):
        raise ValueError(f"{info.path}: '{LABEL_KEY}' has dtype {info.labels.dtype}; "
                         "labels must be integers.")
    with np.load(info.path, allow_pickle=False) as data:
        return data[LABEL_KEY].astype(np.int64)


def read_statistics(path: str | os.PathLike) -> dict[str, FeatureStatistics]:
    """Stored reference statistics: ``{"pool": (mu, sigma), "spatial": (mu_s, sigma_s)}`` (those present)."""
    info = inspect_npz(path)
    statistics = {}
    with np.load(info.path, allow_pickle=False) as data:
        for kind in info.statistics:
            mean_key, cov_key = STATISTICS_KEYS[kind]
            try:
                statistics[kind] = FeatureStatistics(data[mean_key], data[cov_key])
            except ValueError as error:
                raise ValueError(f"{info.path}: bad '{mean_key}'/'{cov_key}': {error}") from error
    return statistics
