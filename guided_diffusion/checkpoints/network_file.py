"""The project's network files: the architecture (``kind`` + ``asdict(config)``) beside the weights,
so they rebuild without flags. Only the classes of :data:`guided_diffusion.presets.NETWORKS` are
ever constructed; writes are atomic.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..atomic import atomic_torch_save
from ..presets import build_network, network_spec
from ..torch_files import load_torch_file
from .matching import load_strict

__all__ = ["NETWORK_FORMAT", "save_network", "load_network", "read_network_metadata", "is_network_file",
           "network_from_file_content"]

NETWORK_FORMAT = "guided_diffusion.network/v1"

PathLike = str | os.PathLike


def is_network_file(content: Any) -> bool:
    """The content of a file written by :func:`save_network`."""
    return isinstance(content, Mapping) and content.get("format") == NETWORK_FORMAT


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
    return atomic_torch_save(payload, path)


def load_network(path: PathLike, map_location="cpu") -> nn.Module:
    """Rebuild a network saved by :func:`save_network` from the file alone.

    The file is read with ``weights_only=True``; its ``kind`` must be a registered network and its
    config may only contain that config class's fields.
    """
    payload = load_torch_file(path, "checkpoint", map_location)
    if not is_network_file(payload):
        raise ValueError(f"{os.fspath(path)!r} is not a network file of format {NETWORK_FORMAT!r} "
                         "(for an OpenAI state dict use load_openai_checkpoint)")
    return network_from_file_content(payload, f"network file {os.fspath(path)!r}")


def network_from_file_content(payload: Mapping[str, Any], source: str) -> nn.Module:
    """The network of an already read network file (see :func:`is_network_file`)."""
    kind = payload["kind"]
    model = build_network(kind, payload["config"])
    load_strict(model, payload["state_dict"], f"the {kind!r} network described in the file", source)
    return model


def read_network_metadata(path: PathLike) -> dict[str, Any]:
    """The ``metadata`` stored by :func:`save_network`."""
    payload = load_torch_file(path, "checkpoint", "cpu")
    return dict(payload.get("metadata", {})) if isinstance(payload, Mapping) else {}
