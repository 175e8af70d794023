"""Value types of the ``gd`` commands' signatures, registered with jsonargparse (the one place).

A type registered here is parsed from the command line by its constructor, so a bad value is
reported by the parser with the constructor's own message (``--scale nan``: "a guidance scale must
be finite and non-negative, got 'nan'") instead of a generic "Expected a <class 'float'>".
"""
from __future__ import annotations

from typing import Literal

from jsonargparse.typing import register_type

from .guidance import GuidanceScale

register_type(GuidanceScale, float, GuidanceScale)

#: How a command logs to W&B: ``offline`` (a local run folder, ``wandb sync`` later), ``online``, ``disabled``.
WandbMode = Literal["offline", "online", "disabled"]

__all__ = ["GuidanceScale", "WandbMode"]
