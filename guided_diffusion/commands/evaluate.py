"""``gd evaluate``: the evaluation suite (:func:`guided_diffusion.evaluation.evaluate`) on one or more devices,
and its W&B run.

With ``--devices N`` (or ``--num_nodes``), Lightning Fabric starts N processes (DDP); every process reads the two
``.npz`` files batch by batch (never whole), computes the features of batches r, r + N, ... on its device,
and the features are gathered in batch order, so the metrics equal one process's. Rank 0 prints, writes the
JSON, the cached reference features and the W&B run.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..atomic import check_output_file
from ..content_hash import content_hash, fingerprint_cache
from ..evaluation import evaluate as evaluate_suite
from ..evaluation.evaluate import METRIC_LABELS, resolve_cache
from ..evaluation.npz import iter_image_batches
from ..evaluation.options import EvaluationOptions
from ..images import save_grid
from ..launch import LaunchOptions, run
from ..tracking import TrackingOptions, artifact_name
from .command import Command


@dataclass(frozen=True)
class EvaluateRequest:
    """A ``gd evaluate`` run.

    Args:
        ref_batch: reference ``.npz`` (images and/or ADM Inception statistics).
        sample_batch: samples ``.npz`` in the ADM layout.
        output_json: where to write the results as JSON (atomically); default: do not write.
        progress: show progress bars.
        overwrite: write ``output_json`` over an existing file that is not an evaluation's JSON.
    """

    ref_batch: str
    sample_batch: str
    output_json: Optional[str] = None
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self):
        if self.tracking.log_artifacts and not self.output_json:
            raise ValueError("--log_artifacts logs the results JSON: give --output_json PATH")
        if self.launch.world_size > 1 and self.evaluation.device != "cpu":
            raise ValueError("--device is one process's device; with --devices N give --accelerator instead")


def run_evaluate(request: EvaluateRequest) -> dict[str, Any]:
    """Score a sample batch against a reference batch (FID, sFID, IS, precision, recall), on one or more devices."""
    if request.output_json is not None:
        check_output_file(request.output_json, "--output_json", {"the reference batch": request.ref_batch,
                                                                 "the sample batch": request.sample_batch},
                          ours=is_evaluation_json, overwrite=request.overwrite)
    if request.launch.world_size == 1:
        payload = evaluate_suite(request.ref_batch, request.sample_batch, request.evaluation,
                                 output_json=request.output_json, progress=request.progress)
    else:
        request.launch.check_available()
        payload = run(request.launch, _evaluate_on_rank, request)
        if payload is None:
            return {}  # a rank other than 0
    log_evaluation(request.tracking, payload, request.ref_batch, request.sample_batch, request.output_json,
                   request.evaluation.reference_cache)
    return payload


def is_evaluation_json(path: Path) -> bool:
    """Whether ``path`` holds the JSON an evaluation wrote (its ``metrics`` and ``sample_batch``)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(payload, dict) and {"metrics", "sample_batch", "reference_batch"} <= set(payload)


def _evaluate_on_rank(fabric, request: EvaluateRequest) -> Optional[dict[str, Any]]:
    payload = evaluate_suite(request.ref_batch, request.sample_batch, request.evaluation, device=str(fabric.device),
                             output_json=request.output_json, distributed=True, progress=request.progress)
    return payload if fabric.global_rank == 0 else None


COMMAND = Command("evaluate", "FID / sFID / IS / precision / recall of a sample .npz against a reference",
                  EvaluateRequest, run_evaluate,
                  skip=frozenset({"launch.precision", "launch.compile", "launch.channels_last"}))


def evaluate(ref_batch: str, sample_batch: str, **options: Any) -> dict[str, Any]:
    """``gd evaluate`` from Python; ``options`` are the command's options by name."""
    return COMMAND(ref_batch, sample_batch, **options)


def log_evaluation(tracking: TrackingOptions, payload: dict[str, Any], ref_batch: str, sample_batch: str,
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
