"""The Lightning layer: training modules and callbacks.

Thin glue over the plain-PyTorch core. Names are imported lazily (``import guided_diffusion.training``
alone does not import Lightning). Reading the checkpoints these modules write is
:mod:`guided_diffusion.checkpoints` (no Lightning); the ``gd fit`` CLI is :mod:`guided_diffusion.commands.fit`.

- :class:`DiffusionModule` trains an ADM UNet (``NoisyClassifierModule`` lives in ``classifiers.module``);
- :class:`NCSNModule` trains a noise-conditional score network (NCSN) on the same UNet;
- :class:`EMA` keeps the EMA weights inside the module (:class:`EmaOptions`: its rate and schedule);
- :class:`SampleGridCallback` logs EMA sample grids;
- :class:`RunCheckpoint` (``ModelCheckpoint`` that also saves the final and the preempted step) and
  :class:`SafeCheckpointIO` (``--ckpt_path`` read with ``weights_only=True``, one-line errors).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "DiffusionModule": "diffusion_module",
    "resolve_diffusion_network": "diffusion_module",
    "TrainingModule": "base",
    "build_lr_scheduler": "lr_schedule",
    "EMA": "ema",
    "EmaOptions": "ema",
    "QuartileMeans": "loss_stats",
    "quartile_means": "loss_stats",
    "SampleGridCallback": "callbacks",
    "RunCheckpoint": "run_state",
    "SafeCheckpointIO": "run_state",
    "StepSnapshot": "run_state",
    "SmallSampleFIDCallback": "fid_callback",
    "NCSNModule": "ncsn_module",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
