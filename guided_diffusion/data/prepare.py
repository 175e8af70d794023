"""``prepare_images`` (``gd prepare SRC DEST``): ADM's pre-processing applied once, written as LitData chunks.

Each image is decoded once, passed through :func:`~.datasets.center_crop_arr` (box-halve, bicubic resize of the
short side, centre crop) and written as uint8 pixels with its label and its position in the sorted file list
(``{"image", "label", "index"}``) by ``litdata.optimize``: parallel worker processes, checkpointed, so a run that
is interrupted (killed, pre-empted, out of disk) resumes where it stopped when the same command runs again. The
folder's :data:`~.prepared.MANIFEST_NAME` records the settings (a re-run with others is refused), the classes and
counts, the unreadable files that were skipped, and whether the set is complete; :mod:`.prepared` reads it.

Plain PyTorch + PIL + LitData; nothing here imports Lightning.
"""
from __future__ import annotations

import builtins
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np

from ..atomic import atomic_write_json, check_output_directory
from .datasets import (
    BAD_IMAGE_ERRORS,
    BadImagePolicy,
    LabelSource,
    UnreadableImageError,
    center_crop_arr,
    decode_image,
    folder_labels,
    list_image_files,
)
from .prepared import MANIFEST_NAME, PreparedManifest, is_remote, litdata, read_manifest  # litdata, as configured there

log = logging.getLogger(__name__)

#: Where the workers of an unfinished run record the files they skipped (removed when the run completes).
SKIPPED_DIR = ".gd_skipped"
#: LitData's checkpoints of an unfinished run (removed when the run completes).
CHECKPOINTS_DIR = ".checkpoints"
#: Seed of the order the images are written in (a random mix of classes in every chunk).
WRITE_ORDER_SEED = 0
MB = 1_000_000
_UNITS = {"tb": 10 ** 12, "gb": 10 ** 9, "mb": 10 ** 6, "kb": 10 ** 3, "t": 10 ** 12, "g": 10 ** 9, "m": 10 ** 6,
          "k": 10 ** 3, "b": 1}


@dataclass(frozen=True)
class PrepareOptions:
    """How ``gd prepare`` writes a set (the option group of the command and of :func:`prepare_images`).

    Args:
        image_size: side of the stored square images: the network's (ADM's centre crop), or larger for random
            crops at load (``ceil(size / 0.8)``: 80 for 64 px).
        labels_from: a file's class: its sub-folder (``directory``), its file-name prefix before ``_``
            (``filename``, guided-diffusion's rule) or ``none`` (all class 0).
        channels: 3 (RGB) or 1 (grey-scale); every image is converted (grey-scale, CMYK, palette, alpha).
        num_workers: processes decoding in parallel (default: the CPUs this process may use).
        on_bad_image: ``skip`` unreadable files (warned about, counted and listed in the manifest) or ``raise``
            (stop naming the file; what was written is kept and a re-run resumes).
        classes_from: a prepared folder whose classes (names and indices) this set takes, e.g. the training set
            when preparing the validation set.
        chunk_bytes: size of a LitData chunk file (``64MB`` or bytes; default: 64 MB, or 1/64 of a smaller set, at
            least 1 MB, so that every loader worker streams several chunks).
    """

    image_size: Optional[int] = None  # required: None is refused by prepare_images in one line
    labels_from: LabelSource = "directory"
    channels: Literal[1, 3] = 3
    num_workers: Optional[int] = None
    on_bad_image: BadImagePolicy = "skip"
    classes_from: Optional[str] = None
    chunk_bytes: Optional[str] = None

    def __post_init__(self):
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.chunk_bytes is not None:
            parse_bytes(self.chunk_bytes)


@dataclass(frozen=True)
class _PrepareItem:
    """``[index, path, label] -> {"image", "label", "index"}`` in a LitData worker (``None``: skipped)."""

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
                file.write(path + "\n")  # before the next item: a resumed run knows every skip before its start
            return None
        return {"image": np.ascontiguousarray(center_crop_arr(image, self.image_size)), "label": int(label),
                "index": int(index)}


def default_chunk_bytes(num_images: int, image_size: int, channels: int) -> int:
    """LitData's recommended 64 MB, or 1/64 of the set (at least 1 MB) when that is smaller, so that a small set
    still spreads over the loader workers (ImageNet at 64 px: 15.7 GB in chunks of 64 MB)."""
    total = num_images * image_size * image_size * channels
    return int(min(64 * MB, max(MB, total // 64)))


def parse_bytes(value: str | int) -> int:
    """``64MB``, ``512kB``, ``1e6`` or an integer -> bytes (decimal units, as LitData's); ``ValueError`` in one line."""
    text = str(value).strip().lower()
    unit = next((suffix for suffix in _UNITS if text.endswith(suffix)), "")
    try:
        size = float(text[:len(text) - len(unit)]) * _UNITS.get(unit, 1)
    except ValueError:
        size = float("nan")
    if not size >= 1:  # also NaN
        raise ValueError(f"chunk_bytes {value!r} is not a size: give bytes or a size such as 64MB")
    return int(size)


def _available_cpus() -> int:
    """CPUs this process may run on (a SLURM or container allocation, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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


def _skipped_files(skipped_log: Path) -> set[str]:
    return {line for log_file in skipped_log.glob("*.txt") for line in log_file.read_text().splitlines() if line}


def _align_resume_points(dest: Path, skipped: set[str]) -> None:
    """Point every LitData worker checkpoint at the first input it has not written.

    LitData resumes worker ``r`` at ``inputs_done`` of its checkpoint, but counts only the items it *wrote* there
    (a skipped file is not counted) and restarts that count at 0 after a resume. Both would make a resumed run
    write some images twice. The images a worker wrote are the first ``samples_written`` readable inputs of its
    list (it works through the list in order), so the first input it has not written is the next readable one.
    """
    folder = dest / CHECKPOINTS_DIR
    config_file = folder / "config.json"
    if not config_file.is_file():
        return
    workers_items = json.loads(config_file.read_text()).get("workers_user_items") or []
    for rank, items in enumerate(workers_items):
        path = folder / f"checkpoint-{rank}.json"
        if not path.is_file():
            continue
        state = json.loads(path.read_text())
        written = sum(int(chunk["chunk_size"]) for chunk in state.get("chunks", []))
        readable = [position for position, item in enumerate(items) if item[1] not in skipped]
        next_input = readable[written] if written < len(readable) else len(items)
        if state.get("inputs_done") != next_input:
            state["inputs_done"] = state["done_till_index"] = next_input
            atomic_write_json(path, state)


_WORKER_ERROR = re.compile(r"^(?:[\w.]+\.)?(\w*Error): (.+)$", re.MULTILINE)
_OS_ERRORS = {name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, OSError)}


def _worker_failure(error: BaseException) -> Optional[BaseException]:
    """A one-line error for what failed in a LitData worker (it reaches us as the text of a traceback): an
    unreadable image (``--on_bad_image raise``) or an operating-system error (no space left, permissions); else
    ``None`` (a bug: its traceback is the report)."""
    kept = "; what was prepared is kept: the same command resumes"
    for name, message in _WORKER_ERROR.findall(str(error)):  # the worker's own error comes first, LitData's after
        if name == "UnreadableImageError":
            return UnreadableImageError(message.strip() + kept)
        if name in _OS_ERRORS:
            return OSError(f"a gd prepare worker failed: {name}: {message.strip()}{kept}")
    return None


def _written_count(dest: Path) -> int:
    index = json.loads((dest / "index.json").read_text())
    return sum(int(chunk["chunk_size"]) for chunk in index["chunks"])


def prepare_images(src: str | os.PathLike, dest: str | os.PathLike, options: PrepareOptions,
                   verbose: bool = False) -> PreparedManifest:
    """Prepare the images under ``src`` into ``dest`` once (see the module docstring); returns the manifest.

    Args:
        src: an image folder (``labels_from="directory"``: one sub-folder per class).
        dest: a new or empty local folder, or one an interrupted run of the same job left (it resumes).
        options: the size, labels, channels, workers, policies and chunk size (:class:`PrepareOptions`).
        verbose: show LitData's progress.
    """
    if options.image_size is None:
        raise ValueError("give --image_size N (the side of the stored images: the network's, or larger for random "
                         "crops)")
    image_size, channels, labels_from = options.image_size, options.channels, options.labels_from
    if is_remote(dest):
        raise ValueError(f"DEST {str(dest)!r} is an object-store URL: prepare into a local folder (a re-run resumes "
                         "it there), then upload the folder (e.g. aws s3 sync DEST s3://...); training reads the URL")
    src, dest = Path(src).resolve(), Path(dest).resolve()
    if dest == src or src in dest.parents:
        raise ValueError(f"DEST {str(dest)!r} lies inside SRC {str(src)!r}: its chunks would be read as source "
                         "files by a re-run; choose a folder outside SRC")
    known_classes = read_manifest(options.classes_from).class_names if options.classes_from is not None else None
    files = list_image_files(src)
    labels, class_names = folder_labels(files, src, labels_from, known_classes)
    workers = max(1, min(options.num_workers or _available_cpus(), len(files)))
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
        _align_resume_points(dest, _skipped_files(skipped_log))
        work = _PrepareItem(image_size, "RGB" if channels == 3 else "L", options.on_bad_image, str(skipped_log))
        # In a seeded random order, so that every chunk (and so every stretch of the stream, which LitData shuffles
        # by chunk and by blocks of 256 within a chunk) mixes the classes instead of holding a class-sorted run.
        # Lists, not tuples: LitData compares them with its checkpoint's JSON copy to resume.
        order = np.random.default_rng(WRITE_ORDER_SEED).permutation(len(files))
        inputs = [[int(i), str(files[i]), labels[i]] for i in order]
        try:
            litdata.optimize(fn=work, inputs=inputs, output_dir=str(dest),
                             chunk_bytes=(parse_bytes(options.chunk_bytes) if options.chunk_bytes is not None
                                          else default_chunk_bytes(len(files), image_size, channels)),
                             num_workers=planned.num_workers, use_checkpoint=True, reorder_files=False,
                             verbose=verbose)
        except RuntimeError as error:
            failure = _worker_failure(error)
            if failure is None:
                raise
            raise failure from None
    skipped = sorted(_skipped_files(skipped_log))
    skipped_set = set(skipped)
    counts = Counter(label for path, label in zip(files, labels) if str(path) not in skipped_set)
    written = _written_count(dest)
    if written != len(files) - len(skipped):
        raise ValueError(f"{dest}: {written} images were written, but {len(files)} files minus {len(skipped)} "
                         f"skipped is {len(files) - len(skipped)}: prepare again into a new folder")
    manifest = dataclasses.replace(
        planned, num_images=written, class_counts=tuple(counts.get(i, 0) for i in range(len(class_names))),
        skipped=tuple(str(Path(path).relative_to(src)) for path in skipped), complete=True)
    atomic_write_json(dest / MANIFEST_NAME, manifest.to_json())
    shutil.rmtree(skipped_log, ignore_errors=True)
    shutil.rmtree(dest / CHECKPOINTS_DIR, ignore_errors=True)
    if skipped:
        log.warning("%d unreadable image(s) skipped; they are listed in %s", len(skipped), dest / MANIFEST_NAME)
    return manifest


__all__ = ["PrepareOptions", "default_chunk_bytes", "parse_bytes", "prepare_images"]
