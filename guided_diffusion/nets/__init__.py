"""ADM networks in plain PyTorch: the layers, the UNet denoiser (also the super-resolution UNet) and
the noise-aware classifiers (ADM's encoder-UNet beside the UNet, as in the reference; a timm trunk).

Their Lightning training is :mod:`classifiers.module` (the package :mod:`classifiers` re-exports them);
named presets and the registry of network kinds are :mod:`guided_diffusion.presets`, above this.
Nothing here knows a noise schedule.
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
from .encoder import POOL_TYPES, EncoderUNet, EncoderUNetConfig
from .timm_classifier import TimmClassifierConfig, TimmNoisyClassifier

__all__ = [
    "AttentionBlock", "AttentionPool2d", "Downsample", "GroupNorm32", "QKVAttention", "QKVAttentionLegacy",
    "ResBlock", "TimestepEmbedSequential", "Upsample", "attention", "timestep_embedding", "zero_module",
    "BackboneConfig", "SuperResUNet", "UNet", "UNetConfig", "default_channel_mult", "apply_fast_paths",
    "POOL_TYPES", "EncoderUNet", "EncoderUNetConfig", "TimmClassifierConfig", "TimmNoisyClassifier",
]
