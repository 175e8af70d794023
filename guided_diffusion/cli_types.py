"""Value types of the ``gd`` commands' signatures, registered with jsonargparse (the one place).

A type registered here is parsed from the command line by its constructor, so a bad value is
reported by the parser with the constructor's own message (``--scale nan``: "a guidance scale must
be finite and non-negative, got 'nan'") instead of a generic "Expected a <class 'float'>".
"""
from __future__ import annotations

from jsonargparse.typing import register_type

from .guidance import GuidanceScale

register_type(GuidanceScale, float, GuidanceScale)

__all__ = ["GuidanceScale"]
