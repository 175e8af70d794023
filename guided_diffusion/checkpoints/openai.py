"""OpenAI guided-diffusion ``.pt`` files: import into the matching preset network, and export.

OpenAI files are plain state dicts in the OpenAI key layout. :func:`load_openai_checkpoint` reads
them with ``torch.load(weights_only=True)`` (a pickle holding anything but tensors and plain
containers is refused), builds the matching preset and loads strictly. On a mismatch the error
lists the missing, unexpected and mis-shaped keys and names the preset that would fit.
:func:`export_openai_checkpoint` writes a network back in that layout (atomically).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..atomic import atomic_torch_save
from ..presets import Preset, get_preset, network_kind
from ..torch_files import load_torch_file
from .matching import (
    CheckpointMismatchError,
    closest_preset,
    find_matching_presets,
    load_strict,
    mismatch_report,
    preset_shapes,
)

__all__ = ["is_state_dict", "load_state_dict_file", "load_openai_checkpoint", "openai_network",
           "export_openai_checkpoint"]

PathLike = str | os.PathLike


def is_state_dict(content: Any) -> bool:
    """A plain ``{name: tensor}`` mapping (the OpenAI layout)."""
    return isinstance(content, Mapping) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in content.items())


def load_state_dict_file(path: PathLike, map_location="cpu") -> dict[str, torch.Tensor]:
    """Read a plain ``{name: tensor}`` file safely (``weights_only=True``)."""
    state = load_torch_file(path, "checkpoint", map_location)
    if not is_state_dict(state):
        raise ValueError(f"{os.fspath(path)!r} is not a plain state dict of tensors (the OpenAI checkpoint layout)")
    return dict(state)


def _settings(preset: Preset) -> dict[str, Any]:
    """What decides how a loaded network samples: its config (dropout aside) and its diffusion."""
    network = {f"network.{k}": v for k, v in dataclasses.asdict(preset.config).items() if k != "dropout"}
    return {**network, **{f"diffusion.{k}": v for k, v in dataclasses.asdict(preset.diffusion).items()}}


def _differing_settings(names: list[str]) -> list[str]:
    settings = [_settings(get_preset(name)) for name in names]
    return sorted(k for k in settings[0] if any(s[k] != settings[0][k] for s in settings[1:]))


def openai_network(state_dict: Mapping[str, torch.Tensor], preset: str | Preset | None,
                   source: str) -> tuple[nn.Module, Preset]:
    """The preset network (``None``: the one whose keys and shapes fit) with ``state_dict`` loaded strictly.

    Several presets may share a key layout (an L_hybrid and an L_vlb model, LSUN categories): when
    they also share every setting that matters for sampling, the first is taken; otherwise the choice
    is the user's, and the error names the presets and the settings in which they differ.
    """
    if preset is None:
        fitting = find_matching_presets(state_dict)
        if not fitting:
            closest = closest_preset(state_dict)
            raise CheckpointMismatchError(mismatch_report(f"any preset (closest: {closest!r})",
                                                          preset_shapes(closest), state_dict, source))
        differing = _differing_settings(fitting)
        if differing:
            raise ValueError(f"{source} fits presets {', '.join(fitting)}, which differ in {', '.join(differing)}: "
                             "name one (preset=... / --preset)")
        preset = fitting[0]
    if isinstance(preset, str):
        preset = get_preset(preset)
    model = preset.build()
    load_strict(model, state_dict, f"preset {preset.name!r} ({preset.kind})", source)
    return model, preset


def load_openai_checkpoint(path: PathLike, preset: str | Preset | None = None, *,
                           map_location="cpu") -> tuple[nn.Module, Preset]:
    """Load a released OpenAI guided-diffusion checkpoint into the matching preset network.

    Args:
        path: the ``.pt`` file (a plain state dict, e.g. ``64x64_diffusion.pt``).
        preset: preset name or object; ``None`` picks the preset whose keys and shapes fit.
        map_location: passed to ``torch.load``.

    Returns:
        ``(network, preset)``; the preset's ``diffusion`` settings build the matching diffusion.

    Raises:
        CheckpointMismatchError: the file does not fit (the message lists the differing keys and
            names the preset that would fit, if any).
        ValueError: the file is not a plain state dict (``weights_only`` refused it).
    """
    return openai_network(load_state_dict_file(path, map_location), preset, f"checkpoint {os.fspath(path)!r}")


def export_openai_checkpoint(model: nn.Module, path: PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s weights as a plain state dict in the OpenAI key layout (atomically).

    Args:
        model: a registered network (UNet, SuperResUNet, EncoderUNet).
        path: destination ``.pt`` file.
        dtype: optional floating-point dtype for the exported tensors (default: unchanged).
    """
    network_kind(model)  # only our own networks have the OpenAI layout
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor.contiguous().clone()
    return atomic_torch_save(state, path)
