"""``gd evaluate``: the evaluation suite (:func:`guided_diffusion.evaluation.evaluate`) on one or more devices,
and its W&B run.

With ``--devices N`` (or ``--num_nodes``), Lightning Fabric starts N processes (DDP); every process reads the two
``.npz`` files batch by batch (never whole), computes the features of batches r, r + N, ... on its device,
and the features are gathered in batch order, so the metrics equal one process's. Rank 0 prints, writes the
JSON, the cached reference features and the W&B run.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

from .cli_types import WandbMode
from .content_hash import content_hash, fingerprint_cache
from .evaluation import evaluate as evaluate_suite
from .evaluation.evaluate import METRIC_LABELS, resolve_cache
from .evaluation.npz import iter_image_batches
from .images import save_grid
from .tracking import Tracking, artifact_name


def evaluate(ref_batch: str, sample_batch: str, *, output_json: Optional[str] = None, device: str = "cpu",
             accelerator: str = "auto", devices: int = 1, num_nodes: int = 1, wandb_project: Optional[str] = None,
             wandb_mode: WandbMode = "offline", log_artifacts: bool = False, **options: Any) -> dict[str, Any]:
    """Score a sample batch against a reference batch (FID, sFID, IS, precision, recall), on one or more devices.

    Args:
        ref_batch: reference ``.npz`` (images and/or ADM Inception statistics).
        sample_batch: samples ``.npz`` in the ADM layout.
        output_json: where to write the results as JSON (atomically); None: do not write.
        device: the torch device of a one-process evaluation (``cpu``, ``cuda``, ``cuda:1``).
        accelerator: the devices of a multi-device run (``gpu``, ``cpu``, ``auto``).
        devices: processes per node computing features (DDP when > 1, each on its own device of ``accelerator``).
        num_nodes: nodes of a multi-node run.
        wandb_project: log the evaluation to this W&B project (job type ``evaluate``: the settings, a grid of the
            first samples, the metrics in the summary and as a table). Default: no W&B run.
        wandb_mode: ``offline`` (the run folder beside the JSON or the samples), ``online``, ``disabled``.
        log_artifacts: also log the JSON as an ``evaluation`` artifact naming both batches by content hash.
        options: the evaluation options (``features``, ``batch_size``, ``reference_cache``, ``nearest_k``...).
    """
    tracking = Tracking(wandb_project, wandb_mode, log_artifacts)
    if log_artifacts and not output_json:
        raise ValueError("--log_artifacts logs the results JSON: give --output_json PATH")
    if devices < 1 or num_nodes < 1:
        raise ValueError(f"devices and num_nodes must be positive, got {devices} and {num_nodes}")
    if devices * num_nodes == 1:
        payload = evaluate_suite(ref_batch, sample_batch, output_json=output_json, device=device, **options)
    else:
        if device != "cpu":
            raise ValueError("--device is one process's device; with --devices N give --accelerator instead")
        from lightning.fabric import Fabric

        fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp")
        fabric.launch()
        payload = evaluate_suite(ref_batch, sample_batch, output_json=output_json, device=str(fabric.device),
                                 distributed=True, **options)
        if fabric.global_rank != 0:
            return payload
    log_evaluation(tracking, payload, ref_batch, sample_batch, output_json, options.get("reference_cache", "auto"))
    return payload


def log_evaluation(tracking: Tracking, payload: dict[str, Any], ref_batch: str, sample_batch: str,
                   output_json: Optional[str], reference_cache: Optional[str]) -> None:
    """The W&B run of one evaluation: settings, a grid of the first samples, the metrics and their table."""
    if not tracking.enabled:
        return
    fingerprints = fingerprint_cache(resolve_cache(reference_cache))
    inputs = {"reference": (ref_batch, content_hash(ref_batch, fingerprints)),
              "samples": (sample_batch, content_hash(sample_batch, fingerprints))}
    directory = Path(output_json).resolve().parent if output_json else Path(sample_batch).resolve().parent
    config = {key: value for key, value in payload.items() if key not in ("metrics", "notes", "details")}
    run = tracking.start("evaluate", Path(sample_batch).stem, config, directory, inputs)
    with tempfile.TemporaryDirectory() as scratch:
        first = next(iter_image_batches(sample_batch, 100))
        run.images({"samples": save_grid(first, Path(scratch) / "samples.png")},
                   {"samples": f"the first {len(first)} images of {sample_batch}"})
    run.metrics(payload["metrics"])
    run.table("metrics", [{"metric": METRIC_LABELS.get(name, name), "value": value, "note": payload["notes"][name]}
                          for name, value in payload["metrics"].items()])
    if output_json:
        run.artifact("evaluation", artifact_name("evaluation", inputs["samples"][1]), [output_json],
                     {"metrics": payload["metrics"]})
    run.finish()
