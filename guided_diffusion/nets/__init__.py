"""ADM networks in plain PyTorch: the layers and the UNet denoiser (also the super-resolution UNet).

The noise-aware classifiers live in :mod:`classifiers` and stand on these layers; named presets and
the registry of network kinds are :mod:`guided_diffusion.presets`, above both. Nothing here knows a
noise schedule.
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
from .fast_paths import apply_fast_paths
from .unet import BackboneConfig, SuperResUNet, UNet, UNetConfig, default_channel_mult

__all__ = [
    "AttentionBlock", "AttentionPool2d", "Downsample", "GroupNorm32", "QKVAttention", "QKVAttentionLegacy",
    "ResBlock", "TimestepEmbedSequential", "Upsample", "attention", "timestep_embedding", "zero_module",
    "BackboneConfig", "SuperResUNet", "UNet", "UNetConfig", "default_channel_mult", "apply_fast_paths",
]
