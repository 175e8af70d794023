"""W&B runs of the commands after training: ``gd sample``, ``gd evaluate`` and ``gd sweep``.

Each command given ``--wandb_project P`` logs one run (job type ``sample`` / ``evaluate`` / ``sweep``): the
resolved settings as its config, images (the sample grid, the sweep's plots), metrics (in the run's
summary), tables (``wandb.Table``) and, with ``--log_artifacts``, its output files as an artifact. The files
a run read (checkpoints, sample and reference batches) are named by their content hash in the artifact's
metadata (``inputs``); online, they are also used as reference artifacts (``checkpoint-<sha256 prefix>``,
``file://`` references, nothing uploaded), so the W&B lineage graph links the samples to the checkpoint that
made them. ``--wandb_mode offline`` (default) writes the run under the command's output directory, for
``wandb sync`` later; offline runs cannot use artifacts, so there the link is the metadata alone.

Training runs log through Lightning's ``WandbLogger`` (see :mod:`guided_diffusion.training`), not here.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

#: How a command logs to W&B: ``offline`` (a local run folder, ``wandb sync`` later), ``online``, ``disabled``.
WandbMode = Literal["offline", "online", "disabled"]


@dataclass(frozen=True)
class TrackingOptions:
    """Tracking: whether and how the command logs to Weights & Biases.

    Args:
        wandb_project: log the run to this W&B project (default: no W&B run).
        wandb_mode: ``offline`` (the run folder under the command's output, ``wandb sync`` it later),
            ``online``, ``disabled``.
        log_artifacts: also log the command's output files (npz, CSV, JSON) as an artifact whose metadata names
            the files it read by content hash (online: linked to them as reference artifacts).
    """

    wandb_project: Optional[str] = None
    wandb_mode: WandbMode = "offline"
    log_artifacts: bool = False

    def __post_init__(self):
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb_mode must be 'offline', 'online' or 'disabled', got {self.wandb_mode!r}")
        if self.wandb_project is not None and not re.fullmatch(r"[\w.\-]+", self.wandb_project):
            raise ValueError(f"wandb_project {self.wandb_project!r}: use letters, digits, '.', '_' and '-'")
        if self.log_artifacts and self.wandb_project is None:
            raise ValueError("--log_artifacts needs --wandb_project (the run the artifacts belong to)")

    @property
    def enabled(self) -> bool:
        return self.wandb_project is not None and self.wandb_mode != "disabled"

    def start(self, job_type: str, name: str, config: Mapping[str, Any], directory: str | os.PathLike,
              inputs: Optional[Mapping[str, tuple[str, str]]] = None) -> Optional["TrackedRun"]:
        """A W&B run writing under ``directory`` (``None`` if tracking is off).

        ``inputs``: ``name -> (path, content hash)`` of the files the command read.
        """
        if not self.enabled:
            return None
        import wandb

        Path(directory).mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=self.wandb_project, mode=self.wandb_mode, dir=str(directory), job_type=job_type,
                         name=name, config=dict(config), reinit="finish_previous")
        return TrackedRun(run, self, dict(inputs or {}))


def artifact_name(kind: str, digest: str) -> str:
    """``kind-<first 16 hex digits of the content hash>``: the same file is the same artifact in every run."""
    return f"{kind}-{digest.split(':')[-1][:16]}"


class TrackedRun:
    """One W&B run of a command (made by :meth:`TrackingOptions.start`); :meth:`finish` ends it."""

    def __init__(self, run, tracking: TrackingOptions, inputs: dict[str, tuple[str, str]]):
        self.run, self.tracking, self.inputs = run, tracking, inputs
        if tracking.wandb_mode == "online":  # lineage: the files read, as reference artifacts (nothing uploaded)
            import wandb

            for kind, (path, digest) in inputs.items():
                reference = wandb.Artifact(artifact_name(kind, digest), type=kind, metadata={"sha256": digest})
                reference.add_reference(Path(path).resolve().as_uri(), checksum=False)
                run.use_artifact(reference)

    @property
    def directory(self) -> Path:
        """The run's folder (``.../wandb/offline-run-*`` or ``run-*``)."""
        return Path(self.run.dir).parent

    def images(self, images: Mapping[str, str | os.PathLike], captions: Optional[Mapping[str, str]] = None) -> None:
        import wandb

        captions = captions or {}
        self.run.log({key: wandb.Image(str(path), caption=captions.get(key)) for key, path in images.items()})

    def log(self, values: Mapping[str, Any]) -> None:
        """One history row (a step of the run's charts)."""
        self.run.log(dict(values))

    def metrics(self, values: Mapping[str, Any]) -> None:
        """Scalars into the run's summary (``None`` values are left out)."""
        for key, value in values.items():
            if value is not None:
                self.run.summary[key] = value

    def table(self, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """``rows`` (dicts with the same keys) as a ``wandb.Table``."""
        import wandb

        columns = list(rows[0]) if rows else []
        self.run.log({key: wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])})

    def artifact(self, kind: str, name: str, files: Sequence[str | os.PathLike],
                 metadata: Optional[Mapping[str, Any]] = None) -> None:
        """Log ``files`` as an artifact (if ``--log_artifacts``); its metadata names the inputs by content hash."""
        if not self.tracking.log_artifacts:
            return
        import wandb

        inputs = {kind_: {"artifact": artifact_name(kind_, digest), "sha256": digest, "path": str(path)}
                  for kind_, (path, digest) in self.inputs.items()}
        artifact = wandb.Artifact(name, type=kind, metadata={**(metadata or {}), "inputs": inputs})
        for path in files:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self) -> Path:
        directory = self.directory
        self.run.finish()
        print(f"W&B run {self.run.id} ({self.tracking.wandb_mode}) in {directory}")
        return directory
