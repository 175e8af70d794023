"""Sample-quality evaluation without TensorFlow: FID, sFID, Inception Score, precision and recall.

Plain PyTorch/numpy (no Lightning), with the definitions of the ADM evaluation suite
(``openai/guided-diffusion`` ``evaluations/evaluator.py``), offline feature extractors and streamed
``.npz`` IO. Entry point: :func:`evaluate`; reusable core: :func:`compute_metrics`.
"""

from .accumulate import FeatureCollector, RunningFeatureStatistics, SampleQualityMetric
from .evaluate import evaluate, format_table, write_json_atomic
from .features import (
    FeatureExtractor,
    InceptionFeatureExtractor,
    MnistFeatureExtractor,
    ModuleFeatureExtractor,
    build_feature_extractor,
    extract_features,
    images_to_pixels,
    resize_bilinear_tf1,
    resize_images,
)
from .inception import InceptionV3, bundled_inception_path, load_inception
from .metrics import (
    ALL_METRICS,
    FeatureStatistics,
    InceptionScore,
    MetricValue,
    compute_metrics,
    frechet_distance,
    inception_score,
    manifold_radii,
    precision_recall,
)
from .npz import NpzInfo, inspect_npz, iter_image_batches, read_labels, read_statistics
from .options import EvaluationOptions

__all__ = [
    "ALL_METRICS", "EvaluationOptions", "FeatureCollector", "FeatureExtractor", "FeatureStatistics",
    "InceptionFeatureExtractor", "InceptionScore", "InceptionV3", "MetricValue", "MnistFeatureExtractor",
    "ModuleFeatureExtractor", "NpzInfo",
    "RunningFeatureStatistics", "SampleQualityMetric", "build_feature_extractor", "bundled_inception_path",
    "compute_metrics", "evaluate", "extract_features", "format_table", "frechet_distance", "images_to_pixels",
    "inception_score", "inspect_npz", "iter_image_batches", "load_inception", "manifold_radii",
    "precision_recall", "read_labels", "read_statistics", "resize_bilinear_tf1", "resize_images",
    "write_json_atomic",
]
