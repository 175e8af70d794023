"""Network checkpoints: OpenAI guided-diffusion ``.pt`` import/export and the project's own format.

* OpenAI files are plain state dicts in the OpenAI key layout. :func:`load_openai_checkpoint` reads
  them with ``torch.load(weights_only=True)`` (a pickle holding anything but tensors and plain
  containers is refused), builds the matching preset and loads strictly. On a mismatch the error
  lists the missing, unexpected and mis-shaped keys and names the preset that would fit.
  :func:`export_openai_checkpoint` writes a network back in that layout.
* The project's network files (:func:`save_network` / :func:`load_network`) store the architecture
  beside the weights (``kind`` + ``asdict(config)``), so they rebuild without flags. Only the
  classes of :data:`guided_diffusion.nets.registry.NETWORKS` are ever constructed.

All writes are atomic: a temporary file in the destination directory, then ``os.replace``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .atomic import atomic_torch_save
from .torch_files import load_torch_file
from .nets.presets import PRESETS, Preset, get_preset
from .nets.registry import build_network, network_kind, network_spec

__all__ = [
    "NETWORK_FORMAT",
    "CheckpointMismatchError",
    "atomic_save",
    "load_state_dict_file",
    "preset_shapes",
    "find_matching_presets",
    "load_openai_checkpoint",
    "export_openai_checkpoint",
    "save_network",
    "load_network",
    "read_network_metadata",
]

NETWORK_FORMAT = "guided_diffusion.network/v1"
#: How many key names of each category a mismatch report shows.
REPORT_KEYS = 10

PathLike = str | os.PathLike


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a network: keys missing, unexpected or of the wrong shape."""


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then atomically rename it into place."""
    return atomic_torch_save(obj, path)


def _safe_load(path: PathLike, map_location) -> Any:
    return load_torch_file(path, "checkpoint", map_location)


def load_state_dict_file(path: PathLike, map_location="cpu") -> dict[str, torch.Tensor]:
    """Read a plain ``{name: tensor}`` file safely (``weights_only=True``)."""
    state = _safe_load(path, map_location)
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError(f"{os.fspath(path)!r} is not a plain state dict of tensors (the OpenAI checkpoint layout)")
    return dict(state)


# ----------------------------------------------------------------------------------------------
# Matching state dicts against presets


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


def _closest_preset(state_dict: Mapping[str, torch.Tensor]) -> str:
    shapes = _shapes(state_dict)
    return min(PRESETS, key=lambda name: sum(map(len, _differences(preset_shapes(name), shapes))))


def _mismatch_report(target: str, expected: Mapping[str, tuple], state_dict: Mapping[str, torch.Tensor],
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


def _load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], target: str, source: str) -> None:
    expected = _shapes(model.state_dict())
    if _shapes(state_dict) != expected:
        raise CheckpointMismatchError(_mismatch_report(target, expected, state_dict, source))
    model.load_state_dict(state_dict, strict=True)


# ----------------------------------------------------------------------------------------------
# OpenAI layout


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
    state_dict = load_state_dict_file(path, map_location)
    source = f"checkpoint {os.fspath(path)!r}"
    if preset is None:
        fitting = find_matching_presets(state_dict)
        if not fitting:
            closest = _closest_preset(state_dict)
            raise CheckpointMismatchError(_mismatch_report(f"any preset (closest: {closest!r})",
                                                           preset_shapes(closest), state_dict, source))
        preset = fitting[0]
    if isinstance(preset, str):
        preset = get_preset(preset)
    model = preset.build()
    _load_strict(model, state_dict, f"preset {preset.name!r} ({preset.kind})", source)
    return model, preset


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
    return atomic_save(state, path)


# ----------------------------------------------------------------------------------------------
# Own format: architecture + weights


def save_network(model: nn.Module, path: PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` with its architecture (kind + config) so :func:`load_network` needs no flags.

    ``metadata`` (plain Python values: str, numbers, lists, dicts) is stored alongside, e.g. the
    preset name or diffusion settings.
    """
    payload = {
        "format": NETWORK_FORMAT,
        **network_spec(model),
        "state_dict": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    return atomic_save(payload, path)


def load_network(path: PathLike, map_location="cpu") -> nn.Module:
    """Rebuild a network saved by :func:`save_network` from the file alone.

    The file is read with ``weights_only=True``; its ``kind`` must be a registered network and its
    config may only contain that config class's fields.
    """
    payload = _safe_load(path, map_location)
    if not isinstance(payload, Mapping) or payload.get("format") != NETWORK_FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a network file of format {NETWORK_FORMAT!r} "
                         "(for an OpenAI state dict use load_openai_checkpoint)")
    kind = payload["kind"]
    model = build_network(kind, payload["config"])
    _load_strict(model, payload["state_dict"], f"the {kind!r} network described in the file",
                 f"network file {os.fspath(path)!r}")
    return model


def read_network_metadata(path: PathLike) -> dict[str, Any]:
    """The ``metadata`` stored by :func:`save_network`."""
    payload = _safe_load(path, "cpu")
    return dict(payload.get("metadata", {})) if isinstance(payload, Mapping) else {}
