"""What a sampling run produces, independent of how many processes produce it.

A run of N samples is cut into shards of ``batch_size`` consecutive sample indices. Everything
about sample i is a function of ``(seed, i)`` alone: its label and its noise generator (seeded
from ``numpy.random.SeedSequence([seed, i])``). A shard is therefore the same on any rank, in any
run, and the union of shards does not depend on the number of processes. Shards are written
atomically as ``shard-000042.npz``; a re-run skips the shards that are already complete, and the
merge takes exactly samples 0..N-1 in index order.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch

from ..atomic import atomic_savez, atomic_write, atomic_write_json

ClassChoice = Literal["all", "random"]
MANIFEST = "run.json"

_LABEL_STREAM, _NOISE_STREAM = 0, 1  # independent SeedSequence streams per sample


def parse_classes(classes: str | int | Sequence[int] | None, num_classes: Optional[int]) -> ClassChoice | list[int]:
    """``"all"`` (cycle through every class), ``"random"`` (uniform, as the reference) or explicit labels.

    Accepts ``"3"``, ``"1,7,9"``, ``[1, 7]``; every label must lie in ``[0, num_classes)``.
    """
    if classes is None:
        classes = "all"
    if isinstance(classes, str):
        text = classes.strip().lower()
        if text in ("all", "random"):
            if num_classes is None:
                return "all"  # unconditional: labels are not used
            return text  # type: ignore[return-value]
        try:
            classes = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"classes must be 'all', 'random' or comma-separated integers, got {classes!r}") from None
    elif isinstance(classes, int):
        classes = [classes]
    labels = [int(label) for label in classes]
    if not labels:
        raise ValueError("classes is an empty list")
    if num_classes is None:
        raise ValueError(f"classes {labels} were requested, but neither the model nor a classifier knows classes")
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise ValueError(f"class label(s) {bad} out of range: the model has {num_classes} classes "
                         f"(0..{num_classes - 1})")
    return labels


@dataclass(frozen=True)
class SamplePlan:
    """The samples of a run: which indices form which shard, their labels and noise seeds.

    Args:
        num_samples: total number of samples N.
        batch_size: samples per shard (also the sampling batch).
        seed: the run's seed; sample i depends on ``(seed, i)`` only.
        num_classes: class count of the labels (``None``: no labels).
        classes: ``"all"`` cycles 0..K-1 by index, ``"random"`` draws uniformly per sample, a list
            cycles through the given labels by index.
    """

    num_samples: int
    batch_size: int
    seed: int = 0
    num_classes: Optional[int] = None
    classes: ClassChoice | tuple[int, ...] = "all"

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not isinstance(self.classes, str):
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def shard_indices(self, shard: int) -> range:
        """Sample indices of ``shard``."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range (0..{self.num_shards - 1})")
        start = shard * self.batch_size
        return range(start, min(start + self.batch_size, self.num_samples))

    def shards_of_rank(self, rank: int, world_size: int) -> list[int]:
        """Round-robin assignment: rank r takes shards r, r + W, r + 2W, ..."""
        return list(range(rank, self.num_shards, world_size))

    def _sequence(self, index: int, stream: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed, index, stream])

    def label(self, index: int) -> Optional[int]:
        if self.num_classes is None:
            return None
        if self.classes == "random":
            return int(np.random.default_rng(self._sequence(index, _LABEL_STREAM)).integers(self.num_classes))
        cycle = range(self.num_classes) if self.classes == "all" else self.classes
        return int(cycle[index % len(cycle)])

    def labels(self, shard: int) -> Optional[torch.Tensor]:
        if self.num_classes is None:
            return None
        return torch.tensor([self.label(i) for i in self.shard_indices(shard)], dtype=torch.long)

    def generators(self, shard: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
        """One generator per sample, seeded from ``(seed, index)``: the sample's noise is its own."""
        generators = []
        for index in self.shard_indices(shard):
            seed = int(self._sequence(index, _NOISE_STREAM).generate_state(1, dtype=np.uint64)[0] >> 1)
            generators.append(torch.Generator(device).manual_seed(seed))
        return generators


# ----------------------------------------------------------------------------------------------
# Files of a run


def to_uint8_nhwc(images: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1], NCHW -> uint8 NHWC, exactly as guided-diffusion's ``image_sample.py``."""
    return ((images + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


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


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: Optional[int] = None) -> Path:
    """A PNG grid of uint8 NHWC images (at most nrow x nrow, nrow defaults to ceil(sqrt(n)))."""
    from PIL import Image
    from torchvision.utils import make_grid

    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    tensor = torch.from_numpy(np.ascontiguousarray(images[: nrow * nrow])).permute(0, 3, 1, 2)
    grid = make_grid(tensor, nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0).numpy()  # grey -> RGB
    picture = Image.fromarray(np.ascontiguousarray(grid))
    return atomic_write(path, lambda file: picture.save(file, format="PNG"))
