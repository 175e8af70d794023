"""Noise-aware classifier p_phi(y | x_t, t) of ADM: the UNet's down-sampling half plus a head.

Dhariwal & Nichol (2021), section 4: the classifier is the encoder of the diffusion UNet (same
timestep embedding, residual blocks with AdaGN, attention at 32/16/8) followed by attention
pooling at the 8x8 feature map; it is trained on noisy images x_t at random t and its gradient
guides sampling. The layers are those of :mod:`guided_diffusion.nets`; parameter names follow the
OpenAI checkpoints (``out.2.positional_embedding``, ``out.2.qkv_proj``, ``out.2.c_proj``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import AttentionPool2d, normalization, timestep_embedding, zero_module
from .unet import BackboneConfig, resolve_config, build_encoder, check_image, check_timesteps

__all__ = ["POOL_TYPES", "EncoderUNetConfig", "EncoderUNet"]

#: Classifier heads: global average pooling, CLIP-style attention pooling, or an MLP over the
#: spatial means of every encoder stage (v2 adds GroupNorm + SiLU).
POOL_TYPES = ("adaptive", "attention", "spatial", "spatial_v2")


@dataclass
class EncoderUNetConfig(BackboneConfig):
    """Architecture of the encoder-UNet classifier. Defaults follow guided-diffusion's classifier flags."""

    model_channels: int = 128
    """Base channel count C (``classifier_width``)."""
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    """Feature-map resolutions (pixels) with self-attention (``classifier_attention_resolutions``)."""
    num_head_channels: int = 64
    """Channels per attention head (the released classifiers use 64)."""
    resblock_updown: bool = True
    """BigGAN-style down-sampling residual blocks (``classifier_resblock_updown``)."""
    num_classes: int = 1000
    """Number of output logits."""
    pool: str = "attention"
    """Head: one of ``"adaptive"``, ``"attention"``, ``"spatial"``, ``"spatial_v2"``."""

    def __post_init__(self):
        super().__post_init__()
        if self.pool not in POOL_TYPES:
            raise ValueError(f"unknown pool {self.pool!r}; choose one of {POOL_TYPES}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")

    def build(self) -> "EncoderUNet":
        return EncoderUNet(self)


class EncoderUNet(nn.Module):
    """Classifier ``model(x_t, t) -> logits (B, num_classes)`` on noisy images at original timesteps.

    Args:
        config: the architecture (an :class:`EncoderUNetConfig` or its ``asdict`` form).
        **overrides: :class:`EncoderUNetConfig` fields.
    """

    def __init__(self, config: EncoderUNetConfig | dict | None = None, **overrides):
        super().__init__()
        config = resolve_config(EncoderUNetConfig, config, overrides)
        self.config = config
        emb_channels = config.embed_channels
        self.time_embed = nn.Sequential(
            nn.Linear(config.model_channels, emb_channels),
            nn.SiLU(),
            nn.Linear(emb_channels, emb_channels),
        )
        self.input_blocks, self.middle_block, stage_channels, ch = build_encoder(config)
        if config.pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(nn.Conv2d(ch, config.num_classes, 1)),
                nn.Flatten(),
            )
        elif config.pool == "attention":
            final_size = config.image_size // 2 ** (len(config.resolved_channel_mult) - 1)
            head_channels = config.num_head_channels if config.num_head_channels > 0 else ch // config.num_heads
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(final_size, ch, head_channels, config.num_classes),
            )
        else:  # "spatial" / "spatial_v2": MLP on the spatial means of every stage and the middle block
            features = sum(stage_channels) + ch
            hidden = 2048
            middle = [nn.ReLU()] if config.pool == "spatial" else [normalization(hidden), nn.SiLU()]
            self.out = nn.Sequential(nn.Linear(features, hidden), *middle, nn.Linear(hidden, config.num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Class logits for noisy images.

        Args:
            x: noisy images ``(B, in_channels, image_size, image_size)``.
            t: original integer timesteps ``(B,)``.

        Returns:
            logits ``(B, num_classes)`` in the dtype of ``x`` (the head runs in float32 under autocast).
        """
        config = self.config
        check_image(x, config.in_channels, config.image_size)
        t = check_timesteps(t, x.shape[0], x.device)
        with torch.autocast(x.device.type, enabled=False):
            emb = self.time_embed(timestep_embedding(t, config.model_channels).to(self.time_embed[0].weight.dtype))

        spatial = config.pool.startswith("spatial")
        means, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                means.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        with torch.autocast(x.device.type, enabled=False):
            if spatial:
                means.append(h.to(x.dtype).mean(dim=(2, 3)))
                return self.out(torch.cat(means, dim=-1))
            return self.out(h.to(x.dtype))
