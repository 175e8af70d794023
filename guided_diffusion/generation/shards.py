"""The files of a sampling run: shards named by the index range they hold (``shard-00000040-00000050.npz`` =
samples 40..49), written atomically; the run's manifest; and the merge of exactly samples 0..N-1, once each,
in index order, into the ADM ``.npz``.

A shard's name says which samples it holds, so the shards of a run need not have one width: a run resumed
with another batch size, or grown from 10k to 50k samples, adds shards for the indices no shard covers yet
(:func:`scan`), and the merge walks the shards by index. A shard that does not read back, or whose count or
labels are not those of its indices, is set aside (``*.bad``, never deleted) and its samples are made again.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..atomic import atomic_savez, atomic_write_json
from .plan import SamplePlan

MANIFEST = "run.json"
#: Version of the run layout (shards by index range, identity without N and batch size) in ``run.json``.
LAYOUT = 2
_SHARD_NAME = re.compile(r"shard-(\d{8,})-(\d{8,})\.npz")


def shard_path(directory: str | os.PathLike, indices: range) -> Path:
    """``shard-{start:08d}-{stop:08d}.npz``: samples start..stop-1."""
    return Path(directory) / f"shard-{indices.start:08d}-{indices.stop:08d}.npz"


def shard_range(path: str | os.PathLike) -> Optional[range]:
    """The indices a shard file's name says it holds (``None``: not a shard's name)."""
    match = _SHARD_NAME.fullmatch(Path(path).name)
    if match is None or int(match[1]) >= int(match[2]):
        return None
    return range(int(match[1]), int(match[2]))


def write_shard(directory: str | os.PathLike, indices: range, images: np.ndarray,
                labels: Optional[np.ndarray]) -> Path:
    """Atomically write one shard: ``arr_0`` uint8 NHWC images, ``arr_1`` int64 labels (if any)."""
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels.astype(np.int64)}
    return atomic_savez(shard_path(directory, indices), **arrays)


def read_shard(path: str | os.PathLike) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(images, labels)`` of a shard or merged ``.npz``; ``ValueError`` naming the file if it does not read back."""
    try:
        with np.load(path) as data:
            return data["arr_0"], (data["arr_1"] if "arr_1" in data.files else None)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{os.fspath(path)!r} does not read back as a sample .npz ({type(error).__name__}: "
                         f"{error})") from None


def arrays_problem(images: np.ndarray, labels: Optional[np.ndarray], plan: SamplePlan,
                   indices: range) -> Optional[str]:
    """Why arrays read from a shard are not samples ``indices`` of ``plan`` (count, dtype, labels), or ``None``."""
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] != len(indices):
        return f"it holds images of shape {images.shape} ({images.dtype}), not {len(indices)} uint8 NHWC images"
    expected = plan.labels(indices)
    if (expected is None) != (labels is None) or (labels is not None and not np.array_equal(labels, expected.numpy())):
        return "its labels are not the ones the plan gives these samples"
    return None


def set_aside(path: Path) -> Path:
    """Rename a bad file to ``NAME.bad`` (``NAME.bad1``, ... if taken): kept for inspection, never deleted."""
    target, number = path.with_name(path.name + ".bad"), 0
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.bad{number}")
    os.replace(path, target)
    return target


@dataclass(frozen=True)
class Coverage:
    """How a run directory's shards cover samples 0..N-1.

    ``pieces``: ``(indices, path, offset)`` in index order, each taking images ``offset .. offset + len(indices)``
    of the shard at ``path``, together covering every index that some intact shard holds exactly once;
    ``missing``: the index ranges no intact shard holds.
    """

    pieces: tuple[tuple[range, Path, int], ...]
    missing: tuple[range, ...]

    @property
    def num_present(self) -> int:
        return sum(len(indices) for indices, _, _ in self.pieces)


def scan(directory: str | os.PathLike, plan: SamplePlan, set_aside_bad: bool = False, check: bool = True,
         within: Optional[range] = None) -> Coverage:
    """Which samples of ``plan`` the shards under ``directory`` already hold (intact ones only), and which not.

    A shard is intact when it reads back and holds ``len(indices)`` uint8 images with the labels the plan
    gives those indices (``check=False`` trusts the names). With ``set_aside_bad`` a bad one is renamed
    ``*.bad`` and reported in one line (only one process scans, so nothing races). Shards past N (of a
    larger run) are left alone; where shards overlap, each index is taken once, from the first. ``within``:
    look at these indices only (default ``0..N-1``).
    """
    directory, within = Path(directory), range(plan.num_samples) if within is None else within
    found = sorted(((indices, path) for path in directory.glob("shard-*.npz")
                    if (indices := shard_range(path)) is not None
                    and indices.start < within.stop and indices.stop > within.start),
                   key=lambda item: (item[0].start, -item[0].stop))
    pieces, missing, cursor = [], [], within.start
    for indices, path in found:
        if indices.stop <= cursor:
            continue  # already covered by an earlier (longer) shard
        if check:
            try:
                images, labels = read_shard(path)
                problem = arrays_problem(images, labels, plan, indices)
            except ValueError as error:
                problem = str(error)
            if problem is not None:
                if set_aside_bad:
                    moved = set_aside(path)
                    print(f"gd sample: shard {path} is bad ({problem}); set aside as {moved.name}, sampling it again")
                continue
        if indices.start > cursor:
            missing.append(range(cursor, indices.start))
            cursor = indices.start
        stop = min(indices.stop, within.stop)
        pieces.append((range(cursor, stop), path, cursor - indices.start))
        cursor = stop
        if cursor == within.stop:
            break
    if cursor < within.stop:
        missing.append(range(cursor, within.stop))
    return Coverage(tuple(pieces), tuple(missing))


def read_samples(directory: str | os.PathLike, plan: SamplePlan, indices: range,
                 check: bool = True) -> Optional[np.ndarray]:
    """The images of samples ``indices`` if intact shards under ``directory`` hold them all, else ``None``
    (``check=False``: the shards were checked already, as :func:`scan` does)."""
    coverage = scan(directory, plan, within=indices, check=check)
    if coverage.missing:
        return None
    return np.concatenate([read_shard(path)[0][offset:offset + len(span)] for span, path, offset in coverage.pieces])


def check_manifest(directory: str | os.PathLike, identity: dict[str, Any]) -> None:
    """Write the run's identity to ``run.json``, or check it equals that of the run being resumed or grown.

    Shards of a different run (another seed, scale, model content...) must never be merged with this one;
    the number of samples, the batch size and the devices are not part of a run's identity.
    """
    path = Path(directory) / MANIFEST
    identity = json.loads(json.dumps({"layout": LAYOUT, **identity}))  # normalise tuples/paths to JSON values
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("layout") != LAYOUT:
            raise ValueError(f"{str(directory)!r} holds a run of an earlier version of this project (shards of "
                             "another layout); sample into a new output directory")
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            raise ValueError(f"{str(directory)!r} holds shards of a different run (settings differ in {changed}); "
                             "use another output directory, or the same settings to resume")
        return
    atomic_write_json(path, identity)


def merge_shards(directory: str | os.PathLike, plan: SamplePlan) -> Path:
    """Write samples 0..N-1, once each in index order, as ``samples_{N}x{H}x{W}x{C}.npz`` (ADM layout).

    The output array is filled shard by shard, so the merge holds the N images once (plus one shard).
    """
    coverage = scan(directory, plan, check=False)  # the samplers checked or wrote every shard just now
    if coverage.missing:
        raise FileNotFoundError(f"samples {_describe(coverage.missing)} of {directory} are missing: re-run the same "
                                "command to complete the run")
    images, labels = None, None
    for span, path, offset in coverage.pieces:
        shard_images, shard_labels = read_shard(path)
        if images is None:
            images = np.empty((plan.num_samples, *shard_images.shape[1:]), np.uint8)
            labels = None if shard_labels is None else np.empty(plan.num_samples, np.int64)
        images[span.start:span.stop] = shard_images[offset:offset + len(span)]
        if labels is not None:
            labels[span.start:span.stop] = shard_labels[offset:offset + len(span)]
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    shape = "x".join(str(s) for s in images.shape)
    return atomic_savez(Path(directory) / f"samples_{shape}.npz", **arrays)


def _describe(ranges) -> str:
    return ", ".join(f"{span.start}..{span.stop - 1}" for span in ranges)
