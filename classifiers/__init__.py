"""Noise-aware classifiers p_phi(y | x_t) for classifier guidance (ADM's encoder-UNet)."""
from .encoder import POOL_TYPES, EncoderUNet, EncoderUNetConfig

__all__ = ["POOL_TYPES", "EncoderUNet", "EncoderUNetConfig"]
