"""The Lightning layer: training modules, callbacks, the ``gd`` LightningCLI, checkpoint loading.

Thin glue over the plain-PyTorch core. Names are imported lazily, so
``from guided_diffusion.training import load_diffusion_checkpoint`` does not import Lightning.

- :class:`DiffusionModule` trains an ADM UNet (``NoisyClassifierModule`` lives in ``classifiers.module``);
- :class:`NCSNModule` trains a noise-conditional score network (NCSN) on the same UNet;
- :class:`EMA` keeps the EMA weights inside the module;
- :class:`SampleGridCallback` logs EMA sample grids;
- :class:`RunCheckpoint` (``ModelCheckpoint`` that also saves the final and the preempted step) and
  :class:`SafeCheckpointIO` (``--ckpt_path`` read with ``weights_only=True``, one-line errors);
- :func:`load_diffusion_checkpoint` / :func:`load_classifier_checkpoint` / :func:`load_ncsn_checkpoint`
  rebuild trained networks from a checkpoint with no flags; :func:`export` writes the OpenAI ``.pt``
  layout (``gd export``).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "DiffusionModule": "diffusion_module",
    "resolve_diffusion_network": "diffusion_module",
    "to_uint8_nhwc": "diffusion_module",
    "TrainingModule": "base",
    "build_lr_scheduler": "base",
    "EMA": "ema",
    "QuartileMeans": "metrics",
    "quartile_means": "metrics",
    "SampleGridCallback": "callbacks",
    "RunCheckpoint": "run_state",
    "SafeCheckpointIO": "run_state",
    "SmallSampleFIDCallback": "fid_callback",
    "GuidedDiffusionCLI": "cli",
    "lightning_main": "cli",
    "load_diffusion_checkpoint": "checkpoint_io",
    "load_classifier_checkpoint": "checkpoint_io",
    "load_ncsn_checkpoint": "checkpoint_io",
    "NCSNModule": "ncsn_module",
    "read_training_checkpoint": "checkpoint_io",
    "export": "checkpoint_io",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
