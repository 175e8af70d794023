"""Execution options of a network that change how fast it runs, never what it computes.

- ``channels_last``: 4-d weights (and so the activations of every convolution) in NHWC memory order, the
  layout cuDNN's and oneDNN's fastest convolution kernels use (on GPUs with tensor cores, for bf16/fp16).
- ``compile``: :meth:`torch.nn.Module.compile` in place (TorchInductor): the module's forward is
  compiled on first call; parameters, buffers and state-dict keys are unchanged, so checkpoints and
  EMA copies are unaffected. The input checks of the hot paths are skipped while compiling.

Both are off by default; ``benchmarks/bench_fast_paths.py`` measures them side by side.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["apply_fast_paths"]


def apply_fast_paths(network: nn.Module, compile: bool = False, channels_last: bool = False) -> nn.Module:
    """Apply the options to ``network`` in place and return it (idempotent: a compiled module is not
    compiled again)."""
    if channels_last:
        network.to(memory_format=torch.channels_last)
    if compile and getattr(network, "_compiled_call_impl", None) is None:
        network.compile()
    return network
