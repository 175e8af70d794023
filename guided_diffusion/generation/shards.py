"""The files of a sampling run: shards written atomically as ``shard-000042.npz``, checked on resume
(a re-run skips the complete ones and sets bad ones aside), the run's manifest, and the merge of
exactly samples 0..N-1 in index order into the ADM ``.npz``.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..atomic import atomic_savez, atomic_write_json
from .plan import SamplePlan

MANIFEST = "run.json"


def shard_path(directory: str | os.PathLike, shard: int) -> Path:
    return Path(directory) / f"shard-{shard:06d}.npz"


def write_shard(directory: str | os.PathLike, shard: int, images: np.ndarray, labels: Optional[np.ndarray]) -> Path:
    """Atomically write one shard: ``arr_0`` uint8 NHWC images, ``arr_1`` int64 labels (if any)."""
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels.astype(np.int64)}
    return atomic_savez(shard_path(directory, shard), **arrays)


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


def shard_problem(path: Path, plan: SamplePlan, shard: int) -> Optional[str]:
    """Why the file of ``shard`` is not that shard of ``plan`` (unreadable, wrong count or labels), or ``None``."""
    try:
        images, labels = read_shard(path)
    except ValueError as error:
        return str(error)
    return arrays_problem(images, labels, plan, shard)


def arrays_problem(images: np.ndarray, labels: Optional[np.ndarray], plan: SamplePlan, shard: int) -> Optional[str]:
    """Why arrays read from a shard file are not ``shard`` of ``plan`` (wrong count, dtype or labels), or ``None``."""
    expected = plan.labels(shard)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] != len(plan.shard_indices(shard)):
        count = len(plan.shard_indices(shard))
        return f"it holds images of shape {images.shape} ({images.dtype}), not {count} uint8 NHWC images"
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


def complete_shards(directory: str | os.PathLike, plan: SamplePlan, shards: Optional[Sequence[int]] = None,
                    set_aside_bad: bool = False) -> set[int]:
    """Shards of ``plan`` (of ``shards``, default all) already on disk and intact.

    A shard file that does not read back, or whose count or labels differ from the plan, is not
    complete: it is sampled again. With ``set_aside_bad`` it is also renamed to ``*.bad`` (a rank
    only ever sets aside its own shards, so ranks never race) and reported in one line.
    """
    done = set()
    wanted = range(plan.num_shards) if shards is None else shards
    for shard in wanted:
        path = shard_path(directory, shard)
        if not path.exists():
            continue
        problem = shard_problem(path, plan, shard)
        if problem is None:
            done.add(shard)
        elif set_aside_bad:
            moved = set_aside(path)
            print(f"gd sample: shard {path} is bad ({problem}); set aside as {moved.name}, sampling it again")
    return done


def check_manifest(directory: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Write the run's settings to ``run.json``, or check they equal those of the run being resumed.

    Shards of a different run (another seed, scale, model...) must never be merged with this one.
    """
    path = Path(directory) / MANIFEST
    settings = json.loads(json.dumps(settings))  # normalise tuples/paths to JSON values
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise ValueError(f"{str(directory)!r} holds shards of a different run (settings differ in {changed}); "
                             "use another output directory, or the same settings to resume")
        return
    atomic_write_json(path, settings)


def merge_shards(directory: str | os.PathLike, plan: SamplePlan) -> Path:
    """Concatenate the shards in index order into ``samples_{N}x{H}x{W}x{C}.npz`` (ADM layout)."""
    images, labels = [], []
    for shard in range(plan.num_shards):
        path = shard_path(directory, shard)
        if not path.exists():
            raise FileNotFoundError(f"shard {path} is missing: re-run the same command to complete the run")
        shard_images, shard_labels = read_shard(path)
        images.append(shard_images)
        if shard_labels is not None:
            labels.append(shard_labels)
    arr_0 = np.concatenate(images)[: plan.num_samples]
    arrays = {"arr_0": arr_0}
    if labels:
        arrays["arr_1"] = np.concatenate(labels)[: plan.num_samples]
    shape = "x".join(str(s) for s in arr_0.shape)
    return atomic_savez(Path(directory) / f"samples_{shape}.npz", **arrays)
