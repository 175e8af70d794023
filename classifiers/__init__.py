"""Noise-aware classifiers p_phi(y | x_t) for classifier guidance (ADM's encoder-UNet), and their training.

The networks live in :mod:`guided_diffusion.nets`, beside the UNet whose layers they share (as in
ADM's reference), and are re-exported here; :mod:`classifiers.module` holds the LightningModule
``NoisyClassifierModule``, imported on first use of its name (``import classifiers`` alone does not
import Lightning). This package stands on :mod:`guided_diffusion`, never the other way round.
"""
from __future__ import annotations

import importlib

from guided_diffusion.nets.encoder import POOL_TYPES, EncoderUNet, EncoderUNetConfig
from guided_diffusion.nets.timm_classifier import TimmClassifierConfig, TimmNoisyClassifier

#: names of :mod:`classifiers.module`, imported lazily (they need Lightning).
_LAZY = ("NoisyClassifierModule", "resolve_classifier_network")

__all__ = ["POOL_TYPES", "EncoderUNet", "EncoderUNetConfig", "TimmClassifierConfig", "TimmNoisyClassifier",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(".module", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
