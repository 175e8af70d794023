"""Nothing a training run did is lost: the final step, a preempted step, a safe resume, the same W&B run.

* :class:`RunCheckpoint` is Lightning's ``ModelCheckpoint`` that also saves (a) the final step of a
  run that stops between multiples of ``every_n_train_steps`` and (b) the step where an exception
  stopped it: SIGTERM (clusters preempt with it; Lightning turns it into ``SIGTERMException`` after
  the current batch), Ctrl-C, or a crash. ``last.ckpt`` then always holds where the run stopped and
  ``gd fit ... --ckpt_path last`` resumes exactly there. On SLURM with ``auto_requeue``, Lightning's
  own SIGUSR1 handler saves an ``hpc`` checkpoint and requeues the job; this class covers the rest.
  It also records the W&B run id in every checkpoint, so a resumed run continues the same W&B run.
* :class:`StepSnapshot` keeps the checkpoint of one chosen step under a fixed name (``gd demo`` guides its
  model with an early checkpoint of the same run: autoguidance at no extra training).
* :class:`SafeCheckpointIO` makes the Trainer read ``--ckpt_path`` through
  :func:`guided_diffusion.torch_files.load_torch_file` (``weights_only=True``, one-line errors).
* :func:`resolve_checkpoint_path` / :func:`logged_run_ids` let the CLI check a ``--ckpt_path`` and
  reattach the loggers before anything is built.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from ..torch_files import check_torch_file, load_torch_file

#: ``--ckpt_path`` values Lightning resolves itself (``last`` is resolved here too, for the W&B id).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
#: Where a checkpoint records the ids of the runs it was logged to: ``{"wandb": run_id}``.
RUN_IDS_KEY = "logger_run_ids"


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that always leaves the step a run stopped at (every argument is Lightning's).

    Differences from ``ModelCheckpoint``:

    * when training ends at a step that was not saved (``max_steps`` not a multiple of
      ``every_n_train_steps``), that step is saved (its own file and ``last.ckpt``);
    * ``save_on_exception`` defaults to ``True``: SIGTERM (after the running batch), Ctrl-C or an
      error during training saves the current step (file and ``last.ckpt``) before the run exits;
    * every checkpoint records the W&B run id (``checkpoint["logger_run_ids"]``), which
      ``gd fit --ckpt_path ...`` uses to resume the same W&B run.
    """

    def __init__(self, *args, save_on_exception: bool = True, **kwargs):
        super().__init__(*args, save_on_exception=save_on_exception, **kwargs)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step and not trainer.fast_dev_run:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # a failed validate / test / predict writes nothing
            super().on_exception(trainer, pl_module, exception)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        ids = {"wandb": logger.version for logger in trainer.loggers if isinstance(logger, WandbLogger)}
        if ids.get("wandb"):
            checkpoint[RUN_IDS_KEY] = ids


class StepSnapshot(Callback):
    """Save the checkpoint of optimizer step ``step`` to ``path`` (atomically), once.

    A resumed run that already passed ``step`` keeps the file it wrote then; rank 0 writes (the Trainer's
    ``save_checkpoint`` gathers what it needs on every rank).

    Args:
        step: the global step to keep (after that many optimizer steps).
        path: where its checkpoint goes.
    """

    def __init__(self, step: int, path: str | os.PathLike):
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self.step, self.path = step, Path(path)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.path.exists():
            tmp = self.path.with_name(self.path.name + ".tmp")
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                os.replace(tmp, self.path)


class SafeCheckpointIO(TorchCheckpointIO):
    """The Trainer's checkpoint reader: ``weights_only=True`` always, one-line errors naming the file."""

    def load_checkpoint(self, path, map_location=None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        return load_torch_file(path, "--ckpt_path checkpoint", map_location or "cpu")


def resolve_checkpoint_path(ckpt_path: Optional[str], checkpoint_dirs: Iterable[str | os.PathLike]) -> Optional[Path]:
    """The file a ``--ckpt_path`` names, checked (exists, a file, a PyTorch file), or ``None``.

    ``last`` is the newest ``last.ckpt`` of the checkpoint directories. When there is none but the directories
    hold other checkpoints, a run is there that cannot be resumed as asked, and a ``ValueError`` says so; with
    no checkpoint at all (the first launch of a script that always passes ``--ckpt_path last``), ``None``:
    Lightning starts the run after a warning. ``best``, ``hpc`` and ``registry`` are left to Lightning.
    """
    if ckpt_path is None or ckpt_path in SPECIAL_CKPT_PATHS[1:]:
        return None
    if ckpt_path == "last":
        dirs = [Path(d) for d in checkpoint_dirs if d]
        found = [d / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}" for d in dirs]
        found = [path for path in found if path.is_file()]
        others = sorted(path.name for d in dirs if d.is_dir() for path in d.glob("*.ckpt"))
        if dirs and not found and others:
            raise ValueError(f"--ckpt_path last: {', '.join(repr(str(d)) for d in dirs)} holds {', '.join(others[:3])}"
                             " but no last.ckpt: give --ckpt_path the checkpoint to resume, or another folder for a "
                             "new run")
        return max(found, key=lambda path: path.stat().st_mtime) if found else None
    return check_torch_file(ckpt_path, "--ckpt_path checkpoint")


def logged_run_ids(path: Path) -> dict[str, str]:
    """The logger run ids a :class:`RunCheckpoint` recorded in ``path`` (``{}`` if none)."""
    checkpoint = load_torch_file(path, "--ckpt_path checkpoint", mmap=True)  # only the small entry is read
    ids = checkpoint.get(RUN_IDS_KEY) if isinstance(checkpoint, dict) else None
    return {str(k): str(v) for k, v in ids.items() if v} if isinstance(ids, dict) else {}
