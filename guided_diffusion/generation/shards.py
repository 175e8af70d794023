"""The files of a sampling run: shards named by the index range they hold (``shard-00000040-00000050.npz`` =
samples 40..49), written atomically; the run's manifest; and the merge of exactly samples 0..N-1, once each,
in index order, into the ADM ``.npz``.

A shard's name says which samples it holds, so the shards of a run need not have one width: a run resumed
with another batch size, or grown from 10k to 50k samples, adds shards for the indices no shard covers yet
(:func:`scan`), and the merge walks the shards by index. A shard that does not read back, or whose count or
labels are not those of its indices, is set aside (``*.bad``, never deleted) and its samples are made again.
"""
from __future__ import annotations

import errno
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..atomic import atomic_savez, atomic_write_json
from ..content_hash import content_hash, fingerprint_cache
from .plan import SamplePlan

MANIFEST = "run.json"
#: The files (glob patterns) a sampling run writes into its directory, besides :data:`MANIFEST`.
RUN_FILES = ("samples_*.npz", "grid.png", "shard-*.npz", "low_res")
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


def read_npz(path: str | os.PathLike, what: str = "sample .npz") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` a user named, read without pickles; one ``ValueError`` line naming the file if it
    does not read back (``FileNotFoundError`` if it does not exist)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except ValueError as error:
        if "allow_pickle" in str(error):  # numpy's advice would be to run the file's code: never
            raise ValueError(f"{os.fspath(path)!r} holds Python objects (pickled arrays), which are never loaded: "
                             f"a {what} holds only numeric arrays") from None
        raise ValueError(f"{os.fspath(path)!r} does not read back as a {what} ({error})") from None
    except (OSError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{os.fspath(path)!r} does not read back as a {what} ({type(error).__name__}: "
                         f"{error})") from None


def read_shard(path: str | os.PathLike) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(images, labels)`` of a shard or merged ``.npz``; ``ValueError`` naming the file if it does not read back."""
    arrays = read_npz(path)
    if "arr_0" not in arrays:
        raise ValueError(f"{os.fspath(path)!r} holds no images ('arr_0'): not a sample .npz")
    return arrays["arr_0"], arrays.get("arr_1")


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


def read_manifest(directory: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The identity in ``directory/run.json`` (``None`` if there is none); one line naming the file if it does not
    read back."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} (the run's identity) does not read back ({error}); the shards beside it "
                         "cannot be matched to settings: use another output directory") from None
    if not isinstance(previous, dict):
        raise ValueError(f"{str(path)!r} (the run's identity) is not a JSON object: use another output directory")
    return previous


def check_manifest(directory: str | os.PathLike, identity: dict[str, Any]) -> None:
    """Write the run's identity to ``run.json``, or check it equals that of the run being resumed or grown.

    Shards of a different run (another seed, scale, model content...) must never be merged with this one;
    the number of samples, the batch size and the devices are not part of a run's identity.
    """
    path = Path(directory) / MANIFEST
    identity = json.loads(json.dumps({"layout": LAYOUT, **identity}))  # normalise tuples/paths to JSON values
    previous = read_manifest(directory)
    if previous is not None:
        if previous.get("layout") != LAYOUT:
            raise ValueError(f"{str(directory)!r} holds a run of an earlier version of this project (shards of "
                             "another layout); sample into a new output directory")
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            raise ValueError(f"{str(directory)!r} holds shards of a different run (settings differ in {changed}); "
                             "use another output directory, or the same settings to resume")
        return
    atomic_write_json(path, identity)


class RunLock:
    """One sampling process per run directory: rank 0 of a ``gd sample`` / ``gd upsample`` holds an exclusive lock
    on ``DIRECTORY/.lock`` (``fcntl.flock``) while it writes, so a second command into the same directory is
    refused in one line instead of sampling the same indices again. The lock goes with the process (also on
    ``kill -9``, which leaves the file, unlocked, for the next run to take); where ``fcntl`` does not exist
    (Windows) there is no lock.
    """

    NAME = ".lock"

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / self.NAME
        self._file = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # a lock file removed by its holder between our open and our lock: open it again
            file = open(self.path, "a+")
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                file.seek(0)
                holder = file.read().strip() or "another process"
                file.close()
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ValueError(f"{str(self.path.parent)!r} is being written by {holder}: wait for it to finish, "
                                     "or sample into another directory") from None
                print(f"warning: {str(self.path.parent)!r} cannot be locked on this file system "
                      f"({error.strerror or error}); two commands into it would both sample")
                return self
            try:
                same = os.fstat(file.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            file.close()
        else:
            raise ValueError(f"{str(self.path.parent)!r}: its lock file keeps changing; is another command writing "
                             "into it?")
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()}")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        """Remove the lock file (while still holding it), then release the lock (a run that waited on the removed
        file sees it is gone and opens it again); a directory the run left empty is removed too."""
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()  # closing the descriptor releases the lock
            self._file = None
            try:
                self.path.parent.rmdir()  # only if empty: a refused run leaves no directory behind
            except OSError:
                pass


def file_identities(output: str, **paths: Optional[str]) -> dict[str, Optional[str]]:
    """The SHA-256 content hash of each named file (``None`` stays ``None``), cached in ``output/fingerprints.json``
    by path, size and mtime: a copied or moved checkpoint is the same run, one changed in place is not."""
    cache = fingerprint_cache(output)
    return {name: None if path is None else content_hash(path, cache) for name, path in paths.items()}


def physical_memory() -> Optional[int]:
    """This machine's physical memory in bytes (``None`` where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_merge_fits(num_samples: int, image_shape: tuple[int, int, int], memory: Optional[int] = None) -> None:
    """The merged ``.npz`` holds the N images in one array (uint8 NHWC): refuse, before any sampling, a run whose
    images alone would not fit in this machine's memory (``memory``: default :func:`physical_memory`)."""
    memory = physical_memory() if memory is None else memory
    needed = num_samples * int(np.prod(image_shape))
    if memory is not None and needed > memory:
        shape = "x".join(map(str, image_shape))
        raise ValueError(f"--num_samples {num_samples}: the merged samples_{num_samples}x{shape}.npz would hold "
                         f"{needed / 2 ** 30:.1f} GiB of images, more than this machine's {memory / 2 ** 30:.1f} GiB "
                         "of memory: sample fewer (a run grows later with a larger --num_samples)")


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
