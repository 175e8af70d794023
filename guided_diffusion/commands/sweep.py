"""``gd sweep``: the guidance-scale trade-off study (Dhariwal & Nichol, Figures 4-5) as one command.

For every (sampler, steps, schedule, interval, scale) point: ``gd sample`` with the same seeds (sample i gets
the same noise and label at every point, so differences are the guidance's), then FID / sFID / IS /
precision / recall against one reference batch whose features are extracted once, and the cost per sample
(model and classifier evaluations, sampling seconds). Writes ``sweep.csv`` (one row per point, rewritten
atomically after each point), ``sweep.png`` (metrics against scale), ``tradeoff.png`` (FID against accuracy,
or precision without MNIST features, coloured by the cost, the Pareto front drawn) and ``sweep.json`` (rows
and the best point by FID). Interrupted sweeps resume: the sample shards of finished points are reused and
only missing points are sampled. The reference features are cached by content (``--reference_cache``), and
``--wandb_project`` logs the sweep as one W&B run (the table, the plots, the best point; ``--log_artifacts``:
the CSV and JSON as a ``sweep`` artifact naming the checkpoints and the reference by content hash).
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, get_args

import numpy as np
import torch

from ..atomic import atomic_write, atomic_write_json, check_output_directory
from ..content_hash import content_hash, fingerprint_cache
from ..evaluation.evaluate import extractor_identity, reference_features, resolve_cache
from ..evaluation.features import build_feature_extractor, extract_features
from ..evaluation.metrics import compute_metrics, minimum_samples
from ..evaluation.npz import inspect_npz, iter_image_batches, read_labels, read_statistics
from ..evaluation.options import EvaluationOptions
from ..generation.request import CascadeOptions, NetworkFiles, OutputOptions, PlanOptions, SampleRequest
from ..guidance import GuidanceOptions, GuidanceScale, ScheduleName, check_scale, parse_interval
from ..launch import LaunchOptions
from ..option_groups import flatten
from ..sampling.options import SamplerOptions
from ..sampling.registry import SamplerName
from ..tracking import TrackingOptions, artifact_name
from .command import Command
from .sample import run_sample

COLUMNS = ("sampler", "steps", "schedule", "interval", "scale", "fid", "sfid", "inception_score", "precision",
           "recall", "accuracy", "model_evaluations", "model_gradient_evaluations", "guide_model_evaluations",
           "classifier_evaluations", "network_evaluations", "seconds_per_sample", "pareto", "num_samples", "seconds",
           "samples")
#: The cost columns summed into ``network_evaluations`` (forward passes of any network per sample; a model
#: evaluation kept for a backward pass through it, as training-free guidance does, counts twice).
COST_COLUMNS = ("model_evaluations", "model_gradient_evaluations", "guide_model_evaluations", "classifier_evaluations")
PLOTTED = (("fid", "FID (lower is better)"), ("inception_score", "Inception Score"),
           ("precision", "Precision"), ("recall", "Recall"))


def label_accuracy(features: dict[str, np.ndarray], labels: Optional[np.ndarray], features_name: str
                   ) -> Optional[float]:
    """Fraction of samples the feature network classifies as their requested label (MNIST features only:
    Inception's 1008 logits are not the model's label space)."""
    if features_name != "mnist" or labels is None or "logits" not in features:
        return None
    return float((features["logits"].argmax(1) == labels).mean())


def quality_axis(rows: Sequence[dict[str, Any]]) -> str:
    """The 'higher is better' metric FID is traded against: accuracy (MNIST features), else precision."""
    return "accuracy" if any(row.get("accuracy") is not None for row in rows) else "precision"


def mark_pareto_front(rows: Sequence[dict[str, Any]]) -> None:
    """``row["pareto"]``: no other point is at least as good in FID (lower), quality (higher) and cost (fewer
    ``network_evaluations`` per sample), and better in one of them."""
    axis = quality_axis(rows)
    scored = [row for row in rows if row.get("fid") is not None and row.get(axis) is not None]

    def cost(row: dict[str, Any]) -> float:
        return row.get("network_evaluations") or 0.0

    for row in rows:
        row["pareto"] = row in scored and not any(
            other["fid"] <= row["fid"] and other[axis] >= row[axis] and cost(other) <= cost(row)
            and (other["fid"] < row["fid"] or other[axis] > row[axis] or cost(other) < cost(row))
            for other in scored)


def point_label(row: dict[str, Any]) -> str:
    text = f"s={row['scale']:g}"
    if row.get("schedule", "constant") != "constant":
        text += f" {row['schedule']}"
    if row.get("interval") not in (None, "none"):
        text += f" [{row['interval']}]"
    return text


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """FID against accuracy (or precision), each point coloured by its sampling time per sample, the Pareto
    front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = quality_axis(rows)
    points = [row for row in rows if row.get("fid") is not None and row.get(axis) is not None]
    figure, ax = plt.subplots(figsize=(6.4, 4.6))
    if points:
        cost = [1000 * (row.get("seconds_per_sample") or 0.0) for row in points]
        drawn = ax.scatter([row[axis] for row in points], [row["fid"] for row in points], c=cost, cmap="viridis")
        figure.colorbar(drawn, ax=ax, label="sampling ms per sample")
        front = sorted((row for row in points if row.get("pareto")), key=lambda row: row[axis])
        if front:
            ax.plot([row[axis] for row in front], [row["fid"] for row in front], color="tab:red", lw=1,
                    label="Pareto front")
            ax.legend(fontsize=8)
        for row in points:
            ax.annotate(point_label(row), (row[axis], row["fid"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel(f"{axis} (higher is better)")
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return atomic_write(path, lambda file: file.write(buffer.getvalue()))


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda file: file.write(buffer.getvalue().encode()))


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """FID, IS, precision and recall against the guidance scale, one line per sampler/steps."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.4))
    for (metric, title), axis in zip(PLOTTED, axes):
        line_of = lambda row: (row["sampler"], row["steps"], row.get("schedule", "constant"),  # noqa: E731
                               row.get("interval", "none"))
        for key in dict.fromkeys(line_of(row) for row in rows):
            points = [(row["scale"], row[metric]) for row in rows if line_of(row) == key and row[metric] is not None]
            if points:
                extra = "" if key[2:] == ("constant", "none") else f" {key[2]}" + (
                    "" if key[3] == "none" else f" [{key[3]}]")
                axis.plot(*zip(*sorted(points)), marker="o", label=f"{key[0]} {key[1]}{extra}")
        axis.set_xlabel("guidance scale")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return atomic_write(path, lambda file: file.write(buffer.getvalue()))


@dataclass(frozen=True)
class SweepPoints:
    """Sweep: the points (every combination of these is sampled with the same seeds and scored).

    Args:
        scales: guidance scales.
        samplers: sampler names; every sampler is run with every entry of ``steps``.
        steps: respacings (e.g. ``ddim25``, ``250``).
        schedules: classifier-scale schedules (``constant``, ``linear``, ``cosine``; see ``--schedule``).
        intervals: guidance intervals, ``"lo,hi"`` in ``--interval_in`` or ``none`` (every step).
    """

    scales: Sequence[GuidanceScale] = (0.0, 0.5, 1.0, 2.0, 4.0, 10.0)
    samplers: Sequence[SamplerName] = ("ddim",)
    steps: Sequence[str] = ("ddim25",)
    schedules: Sequence[ScheduleName] = ("constant",)
    intervals: Sequence[str] = ("none",)

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(check_scale(scale) for scale in self.scales))
        for name in ("samplers", "steps", "schedules", "intervals"):
            object.__setattr__(self, name, tuple(str(value) for value in getattr(self, name)))
        if not all((self.scales, self.samplers, self.steps, self.schedules, self.intervals)):
            raise ValueError("scales, samplers, steps, schedules and intervals must each name at least one value")
        for name, known in (("samplers", get_args(SamplerName)), ("schedules", get_args(ScheduleName))):
            unknown = [value for value in getattr(self, name) if value not in known]
            if unknown:
                raise ValueError(f"--{name}: expected values of {', '.join(known)}, got {unknown}")

    def __iter__(self) -> Iterator[tuple[str, str, str, str, float]]:
        """``(sampler, steps, schedule, interval, scale)`` of every point, in order."""
        for sampler in self.samplers:
            for steps in self.steps:
                for schedule in self.schedules:
                    for interval in self.intervals:
                        for scale in self.scales:
                            yield sampler, steps, schedule, interval, scale


@dataclass(frozen=True)
class SweepRequest:
    """A ``gd sweep`` run.

    Args:
        checkpoint: diffusion model (``.ckpt`` or OpenAI ``.pt``; as ``gd sample``).
        reference: reference batch ``.npz`` (real images ``arr_0`` and/or ADM Inception statistics).
    """

    checkpoint: str
    reference: str
    output: OutputOptions = field(default_factory=lambda: OutputOptions("outputs/sweep"))
    points: SweepPoints = field(default_factory=SweepPoints)
    networks: NetworkFiles = field(default_factory=NetworkFiles)
    guidance: GuidanceOptions = field(default_factory=GuidanceOptions)
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    plan: PlanOptions = field(default_factory=lambda: PlanOptions(num_samples=1000, batch_size=50, classes="random"))
    cascade: CascadeOptions = field(default_factory=CascadeOptions)
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)

    def __post_init__(self):
        needed = minimum_samples(nearest_k=self.evaluation.nearest_k)
        if self.plan.num_samples is None or self.plan.num_samples < needed:
            raise ValueError(f"num_samples={self.plan.num_samples} is too few for precision/recall with "
                             f"k={self.evaluation.nearest_k} (need at least {needed})")
        for point in self.points:  # every point's settings are checked before any work
            self.point(point)

    def point(self, point: tuple[str, str, str, str, float]) -> tuple[str, SampleRequest]:
        """The name of a point's directory and its ``gd sample`` request."""
        sampler, steps, schedule, interval, scale = point
        interval = "none" if parse_interval(interval) is None else interval
        name = f"scale-{scale:g}" + ("" if schedule == "constant" else f"-{schedule}") + (
            "" if interval == "none" else f"-{self.guidance.interval_in}-{interval.replace(',', '-')}")
        directory = Path(self.output.output) / f"{sampler}-{steps}" / name
        guidance = self.guidance.replace(scale=scale, schedule=schedule,
                                         guidance_interval=None if interval == "none" else interval)
        return str(directory), SampleRequest(
            self.checkpoint, OutputOptions(str(directory), grid=True, progress=self.output.progress,
                                           overwrite=self.output.overwrite), self.networks,
            guidance, self.sampler.replace(sampler=sampler, steps=steps), self.plan, self.cascade,
            launch=self.launch)


def run_sweep(request: SweepRequest) -> dict[str, Any]:
    """Sample at each guidance scale (and sampler / step count / schedule / interval) with fixed seeds, evaluate,
    tabulate and plot."""
    evaluation, reference = request.evaluation, request.reference
    request.launch.check_available()
    reference_info = inspect_npz(reference)  # a bad reference fails before any sampling
    out = check_output_directory(request.output.output)
    extractor = build_feature_extractor(evaluation.features, inception_weights=evaluation.inception_weights,
                                        resize=evaluation.resize, device=torch.device(evaluation.device))
    stored = read_statistics(reference) if evaluation.use_reference_statistics and evaluation.features == "inception" \
        else {}
    references = {}
    if reference_info.images is not None:
        cache = resolve_cache(evaluation.reference_cache)
        identity = extractor_identity(extractor, evaluation.features, evaluation.resize, fingerprint_cache(cache))
        references = reference_features(extractor, reference, identity, cache=cache,
                                        progress=request.output.progress)
    elif not {"pool", "spatial"} <= set(stored):
        raise ValueError(f"{reference}: no images and no usable Inception statistics for "
                         f"features={evaluation.features!r}")

    rows: list[dict[str, Any]] = []
    for point in request.points:
        started = time.perf_counter()
        _, sample_request = request.point(point)
        run = run_sample(sample_request)
        if run.samples is None:  # a non-zero DDP rank: rank 0 evaluates
            continue
        sample_features = extract_features(extractor, iter_image_batches(run.samples, 64))
        results = compute_metrics(references, sample_features, reference_statistics=stored,
                                  split_size=evaluation.split_size, nearest_k=evaluation.nearest_k,
                                  device=torch.device(evaluation.device))
        cost = run.cost.per_sample() if run.cost is not None else {}
        sampler_name, step_spec, schedule, interval, scale = point
        rows.append({"sampler": sampler_name, "steps": step_spec, "schedule": schedule,
                     "interval": "none" if parse_interval(interval) is None else interval, "scale": scale,
                     **{name: result.value for name, result in results.items()},
                     "accuracy": label_accuracy(sample_features, read_labels(run.samples), evaluation.features),
                     **{name: cost.get(name) for name in COST_COLUMNS},
                     "network_evaluations": sum(cost.get(name, 0.0) for name in COST_COLUMNS) if cost else None,
                     "seconds_per_sample": cost.get("seconds"),
                     "num_samples": request.plan.num_samples, "seconds": round(time.perf_counter() - started, 1),
                     "samples": str(run.samples)})
        mark_pareto_front(rows)
        write_csv(out / "sweep.csv", rows)
        print(_format_row(rows[-1]))
    if not rows:
        return {}
    best = min((row for row in rows if row["fid"] is not None), key=lambda row: row["fid"], default=None)
    summary = {"rows": rows, "best_by_fid": best, "features": evaluation.features, "reference": str(reference),
               "note": f"{request.plan.num_samples} samples per point: a small-sample estimate (FID is biased upward "
                       "at small N)"}
    atomic_write_json(out / "sweep.json", summary)
    plot = plot_sweep(rows, out / "sweep.png")
    tradeoff = plot_tradeoff(rows, out / "tradeoff.png")
    if best is not None:
        print(f"best point by FID: {point_label(best)} ({best['sampler']} {best['steps']}, FID {best['fid']:.2f}); "
              f"wrote {out / 'sweep.csv'}, {plot} and {tradeoff}")
    if request.tracking.enabled:
        log_sweep(request.tracking, flatten(request, COMMAND.skip), summary, out,
                  {"checkpoint": request.checkpoint, "classifier": request.networks.classifier,
                   "guide_model": request.networks.guide_model,
                   "upsampler": request.cascade.upsampler, "reference": reference})
    return summary


def log_sweep(tracking: TrackingOptions, settings: dict[str, Any], summary: dict[str, Any], out: Path,
              paths: dict[str, Optional[str]]) -> None:
    """The W&B run of a finished sweep: a history row and a table row per point, the plots, the best point."""
    inputs = {name: (path, content_hash(path, fingerprint_cache(out))) for name, path in paths.items() if path}
    run = tracking.start("sweep", out.name, {**settings, "output": str(out)}, out, inputs)
    rows = [{column: row.get(column) for column in COLUMNS} for row in summary["rows"]]
    for row in rows:
        run.log({key: value for key, value in row.items() if isinstance(value, (int, float))})
    run.table("sweep", rows)
    run.images({"sweep": out / "sweep.png", "tradeoff": out / "tradeoff.png"},
               {"sweep": "metrics against the guidance scale", "tradeoff": "FID against accuracy / precision"})
    best = summary["best_by_fid"] or {}
    run.metrics({f"best/{key}": best.get(key) for key in ("scale", "fid", "accuracy", "precision", "recall")})
    run.metrics({"best/point": point_label(best)} if best else {})
    digest = content_hash(out / "sweep.csv")
    run.artifact("sweep", artifact_name("sweep", digest), [out / "sweep.csv", out / "sweep.json"],
                 {"points": len(rows), "features": summary["features"]})
    run.finish()


def _format_row(row: dict[str, Any]) -> str:
    shown = [f"{row['sampler']} {row['steps']} {point_label(row)}:"]
    for name in ("fid", "sfid", "inception_score", "precision", "recall", "accuracy", "network_evaluations"):
        if row.get(name) is not None:
            shown.append(f"{name}={row[name]:.3f}")
    if row.get("seconds_per_sample") is not None:
        shown.append(f"ms/sample={1000 * row['seconds_per_sample']:.1f}")
    return " ".join(shown)


#: the options of the sweep's groups it does not take (swept by ``points``, or fixed per point)
SWEPT = frozenset({"guidance.scale", "guidance.schedule", "guidance.guidance_interval", "sampler.sampler",
                   "sampler.steps", "output.grid", "evaluation.batch_size"})
COMMAND = Command("sweep", "sample and evaluate over guidance scales and samplers", SweepRequest, run_sweep,
                  skip=SWEPT, renamed={"eval_device": "device", "scale": "scales", "schedule": "schedules",
                                       "guidance_interval": "intervals", "sampler": "samplers"})


def sweep(checkpoint: str, reference: str, output: str = "outputs/sweep", **options: Any) -> dict[str, Any]:
    """``gd sweep`` from Python: ``sweep("model.ckpt", "ref.npz", "out", scales=[0, 1, 4], classifier="clf.ckpt")``;
    ``options`` are the command's options by name."""
    return COMMAND(checkpoint, reference, output=output, **options)
