"""ADM networks in plain PyTorch: layers, the UNet denoiser, presets and the network registry.

The encoder-UNet classifier lives in :mod:`classifiers` and reuses these layers. Presets and the
registry (which know about the classifier too) are imported lazily: ``from guided_diffusion.nets
import get_preset`` works without creating an import cycle.
"""
from .layers import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    GroupNorm32,
    QKVAttention,
    QKVAttentionLegacy,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    attention,
    timestep_embedding,
    zero_module,
)
from .unet import BackboneConfig, SuperResUNet, UNet, UNetConfig, default_channel_mult

_LAZY = {
    "Preset": "presets",
    "get_preset": "presets",
    "list_presets": "presets",
    "PRESETS": "presets",
    "SamplingSettings": "presets",
    "config_from_openai_flags": "presets",
    "NETWORKS": "registry",
    "build_network": "registry",
    "network_kind": "registry",
    "network_spec": "registry",
    "config_from_dict": "registry",
}

__all__ = [
    "AttentionBlock", "AttentionPool2d", "Downsample", "GroupNorm32", "QKVAttention", "QKVAttentionLegacy",
    "ResBlock", "TimestepEmbedSequential", "Upsample", "attention", "timestep_embedding", "zero_module",
    "BackboneConfig", "SuperResUNet", "UNet", "UNetConfig", "default_channel_mult", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
