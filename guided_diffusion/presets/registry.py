"""The closed set of network classes a checkpoint may ask for, by kind name.

Checkpoints store ``kind`` and ``asdict(config)``; only the classes listed here are ever built
from a file (nothing a file names is imported). The networks (denoisers and classifiers) are those of
:mod:`guided_diffusion.nets`; the registry stands above them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from torch import nn

from ..nets.encoder import EncoderUNet, EncoderUNetConfig
from ..nets.timm_classifier import TimmClassifierConfig
from ..nets.unet import SuperResUNet, UNet, UNetConfig

__all__ = ["NetworkType", "NETWORKS", "network_kind", "config_from_dict", "build_network", "network_spec",
           "classifier_config_from_dict"]


class NetworkType(NamedTuple):
    cls: type[nn.Module]
    config_cls: type


#: kind -> (class, config class).
NETWORKS: dict[str, NetworkType] = {
    "unet": NetworkType(UNet, UNetConfig),
    "superres_unet": NetworkType(SuperResUNet, UNetConfig),
    "encoder_unet": NetworkType(EncoderUNet, EncoderUNetConfig),
}


def _network_type(kind: str) -> NetworkType:
    try:
        return NETWORKS[kind]
    except KeyError:
        raise ValueError(f"unknown network kind {kind!r}; known kinds: {sorted(NETWORKS)}") from None


def network_kind(model: nn.Module) -> str:
    """The registry name of ``model``'s class (exact class match)."""
    for kind, entry in NETWORKS.items():
        if type(model) is entry.cls:
            return kind
    raise TypeError(f"{type(model).__name__} is not a registered network ({sorted(NETWORKS)})")


def _config_of(config_cls: type, config: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return config_cls(**config)


def config_from_dict(kind: str, config: dict[str, Any] | Any):
    """Rebuild the config of a ``kind`` network from its ``asdict`` form, rejecting unknown fields."""
    config_cls = _network_type(kind).config_cls
    if isinstance(config, config_cls):
        return config
    if not isinstance(config, dict):
        raise TypeError(f"config for a {kind!r} network must be a dict or {config_cls.__name__}, "
                        f"got {type(config).__name__}")
    return _config_of(config_cls, config)


def classifier_config_from_dict(config: dict[str, Any]) -> EncoderUNetConfig | TimmClassifierConfig:
    """The classifier config stored (as a dict) in a checkpoint: timm configs carry ``model_name``."""
    return _config_of(TimmClassifierConfig if "model_name" in config else EncoderUNetConfig, config)


def build_network(kind: str, config: dict[str, Any] | Any) -> nn.Module:
    """Construct a registered network from its kind and config (dataclass or ``asdict`` form)."""
    return _network_type(kind).cls(config_from_dict(kind, config))


def network_spec(model: nn.Module) -> dict[str, Any]:
    """``{"kind": ..., "config": asdict(config)}``: everything needed to rebuild ``model`` without flags."""
    return {"kind": network_kind(model), "config": dataclasses.asdict(model.config)}
