"""Does a state dict fit a network? Key / shape comparison, strict loading with one report style, and
which presets a state dict fits (how OpenAI files are recognised from their keys alone).
"""
from __future__ import annotations

import functools
from typing import Mapping

import torch
from torch import nn

from ..presets import PRESETS

__all__ = ["CheckpointMismatchError", "preset_shapes", "find_matching_presets", "closest_preset", "mismatch_report",
           "load_strict"]

#: How many key names of each category a mismatch report shows.
REPORT_KEYS = 10


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a network: keys missing, unexpected or of the wrong shape."""


@functools.lru_cache(maxsize=None)
def preset_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a preset's state dict, computed on the meta device (no memory used)."""
    with torch.device("meta"):
        model = PRESETS[name].build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _differences(expected: Mapping[str, tuple], found: Mapping[str, tuple]):
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [(k, found[k], expected[k]) for k in expected if k in found and found[k] != expected[k]]
    return missing, unexpected, misshaped


def find_matching_presets(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of all presets whose key set and shapes equal those of ``state_dict`` exactly."""
    shapes = _shapes(state_dict)
    return [name for name in PRESETS if preset_shapes(name) == shapes]


def closest_preset(state_dict: Mapping[str, torch.Tensor]) -> str:
    shapes = _shapes(state_dict)
    return min(PRESETS, key=lambda name: sum(map(len, _differences(preset_shapes(name), shapes))))


def mismatch_report(target: str, expected: Mapping[str, tuple], state_dict: Mapping[str, torch.Tensor],
                    source: str) -> str:
    missing, unexpected, misshaped = _differences(expected, _shapes(state_dict))

    def listing(items):
        shown = ", ".join(items[:REPORT_KEYS])
        return shown + (f", ... ({len(items) - REPORT_KEYS} more)" if len(items) > REPORT_KEYS else "")

    lines = [f"{source} does not fit {target} ({len(state_dict)} tensors in the file, {len(expected)} expected):"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s): {listing(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): {listing(unexpected)}")
    if misshaped:
        lines.append(f"  {len(misshaped)} mis-shaped key(s): "
                     + listing([f"{k} (file {tuple(a)} vs network {tuple(b)})" for k, a, b in misshaped]))
    fitting = find_matching_presets(state_dict)
    if fitting:
        lines.append(f"  It fits preset {fitting[0]!r}" + (f" (also: {', '.join(fitting[1:])})" if fitting[1:] else "")
                     + f": load it with preset={fitting[0]!r}.")
    else:
        lines.append("  No known preset fits it exactly.")
    return "\n".join(lines)


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], target: str, source: str) -> None:
    expected = _shapes(model.state_dict())
    if _shapes(state_dict) != expected:
        raise CheckpointMismatchError(mismatch_report(target, expected, state_dict, source))
    model.load_state_dict(state_dict, strict=True)
