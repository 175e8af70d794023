"""The ADM UNet (Dhariwal & Nichol 2021, built on Ho et al. 2020 and Nichol & Dhariwal 2021).

``UNet(x_t, t, y=None)`` predicts the noise eps (plus the variance interpolation channels v when
the variance is learned) from a noisy image ``x_t`` at the original integer timestep ``t``:

* timestep embedding: sinusoidal features of ``t`` -> Linear -> SiLU -> Linear (width 4C), plus a
  learned class embedding for class-conditional models;
* encoder: a 3x3 conv, then per resolution level ``num_res_blocks`` residual blocks (with
  self-attention at the chosen resolutions) and a down-sampling stage (strided conv / avg-pool,
  or a BigGAN-style down-sampling residual block with ``resblock_updown``);
* middle: ResBlock, AttentionBlock, ResBlock;
* decoder: the mirror image, each block consuming a skip connection from the encoder;
* output head: GroupNorm, SiLU, zero-initialised 3x3 conv.

:class:`SuperResUNet` is the upsampler: the low-resolution image, bilinearly up-sampled to the
output size, is concatenated to ``x_t`` on the channel axis.

The architecture is configured by :class:`UNetConfig`, a plain dataclass: ``asdict(config)`` is
what checkpoints store, ``UNetConfig(**d)`` rebuilds it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

from ..tensor_checks import check_index_range
from .layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    num_attention_heads,
    timestep_embedding,
    zero_module,
)

__all__ = [
    "default_channel_mult",
    "BackboneConfig",
    "UNetConfig",
    "UNet",
    "SuperResUNet",
    "build_encoder",
    "check_image",
    "check_timesteps",
    "resolve_config",
]

#: ADM's channel multipliers per image size (guided-diffusion ``create_model``), plus 32 px.
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """ADM's channel multipliers for a square image of side ``image_size``."""
    try:
        return DEFAULT_CHANNEL_MULT[image_size]
    except KeyError:
        raise ValueError(f"no default channel_mult for image_size={image_size} (known: "
                         f"{sorted(DEFAULT_CHANNEL_MULT)}); set channel_mult explicitly") from None


@dataclass
class BackboneConfig:
    """Fields shared by the UNet and the encoder-UNet classifier (the UNet's down-sampling half)."""

    image_size: int = 64
    """Side length of the square input images the network is built for."""
    in_channels: int = 3
    """Channels of the input images."""
    model_channels: int = 128
    """Base channel count C (``num_channels``/``classifier_width`` in the reference flags)."""
    num_res_blocks: int = 2
    """Residual blocks per resolution level (``classifier_depth`` for classifiers)."""
    attention_resolutions: tuple[int, ...] = (16, 8)
    """Feature-map resolutions (in pixels, e.g. ``(32, 16, 8)``) that get self-attention."""
    dropout: float = 0.0
    """Dropout probability inside the residual blocks."""
    channel_mult: tuple[float, ...] | None = None
    """Channel multiplier per resolution level; ``None`` = ADM's default for ``image_size``."""
    conv_resample: bool = True
    """Learned 3x3 convs for plain up/down-sampling (otherwise nearest / average pooling)."""
    num_heads: int = 4
    """Attention heads when ``num_head_channels == -1``."""
    num_head_channels: int = -1
    """Fixed channels per attention head (ADM: 64); ``-1`` = use ``num_heads``."""
    use_scale_shift_norm: bool = True
    """Adaptive group norm (AdaGN): ``GroupNorm(h) * (1 + scale) + shift`` from the embedding."""
    resblock_updown: bool = False
    """BigGAN-style residual blocks for up/down-sampling."""
    use_new_attention_order: bool = False
    """Split q, k, v before the heads (otherwise the legacy heads-first ordering)."""
    use_checkpoint: bool = False
    """Gradient checkpointing: recompute each block's activations in the backward pass."""

    def __post_init__(self):
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.channel_mult is not None:
            self.channel_mult = tuple(m if isinstance(m, float) and not m.is_integer() else int(m)
                                      for m in self.channel_mult)
        mults = self.resolved_channel_mult
        levels = len(mults)
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size={self.image_size} is not divisible by 2**{levels - 1} "
                             f"({levels} resolution levels in channel_mult={mults})")
        reachable = {self.image_size // 2**level for level in range(levels)}
        unreachable = sorted(set(self.attention_resolutions) - reachable, reverse=True)
        if unreachable:
            raise ValueError(f"attention_resolutions {unreachable} are not feature-map sizes of a "
                             f"{self.image_size}px network with {levels} levels (sizes: {sorted(reachable)})")
        for level, mult in enumerate(mults):
            channels = int(mult * self.model_channels)
            if channels % 32:
                raise ValueError(f"level width {channels} (model_channels={self.model_channels} x {mult}) "
                                 "is not divisible by the 32 GroupNorm groups")
            if level == levels - 1 or self.image_size // 2**level in self.attention_resolutions:
                num_attention_heads(channels, self.num_heads, self.num_head_channels)

    @property
    def resolved_channel_mult(self) -> tuple[float, ...]:
        """``channel_mult``, or ADM's default for ``image_size`` when it is ``None``."""
        return self.channel_mult if self.channel_mult is not None else default_channel_mult(self.image_size)

    @property
    def attention_downsample_rates(self) -> tuple[int, ...]:
        """``attention_resolutions`` as down-sampling factors (the reference's internal form)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    @property
    def embed_channels(self) -> int:
        """Width of the timestep (+class) embedding: 4C."""
        return 4 * self.model_channels

    def to_dict(self) -> dict:
        """Plain-Python form stored in checkpoints (``type(self)(**d)`` rebuilds it)."""
        return dataclasses.asdict(self)


@dataclass
class UNetConfig(BackboneConfig):
    """Architecture of an ADM UNet denoiser. Defaults follow guided-diffusion's model defaults."""

    out_channels: int | None = None
    """Output channels; ``None`` = ``in_channels``, doubled when ``learn_sigma``."""
    learn_sigma: bool = False
    """Also predict the variance interpolation v (improved DDPM), doubling the output channels."""
    num_classes: int | None = None
    """Number of classes for a class-conditional model; ``None`` = unconditional."""
    num_heads_upsample: int = -1
    """Heads of the decoder attention when ``num_head_channels == -1`` (``-1`` = ``num_heads``)."""
    low_res_size: int | None = None
    """Super-resolution model: side of the low-resolution conditioning image (``None`` = not SR)."""
    null_class: bool = False
    """One extra label embedding, index ``num_classes``, meaning "no label" (label dropout for
    classifier-free guidance); ``label_emb`` then has ``num_classes + 1`` rows."""

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {self.num_classes}")
        if self.null_class and self.num_classes is None:
            raise ValueError("null_class needs a class-conditional model (num_classes is None)")

    @property
    def resolved_out_channels(self) -> int:
        """Output channels: eps (``in_channels``), plus as many variance channels with ``learn_sigma``."""
        if self.out_channels is not None:
            return self.out_channels
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def is_super_resolution(self) -> bool:
        return self.low_res_size is not None

    def build(self) -> "UNet":
        """Construct the network: :class:`SuperResUNet` when ``low_res_size`` is set, else :class:`UNet`."""
        return (SuperResUNet if self.is_super_resolution else UNet)(self)


def resolve_config(config_cls, config, overrides: dict):
    """A ``config_cls`` from a config instance, its ``asdict`` form or ``None``, with keyword overrides."""
    if config is None:
        return config_cls(**overrides)
    if isinstance(config, dict):
        return config_cls(**{**config, **overrides})
    if not isinstance(config, config_cls):
        raise TypeError(f"expected a {config_cls.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides) if overrides else config


def build_encoder(config: BackboneConfig) -> tuple[nn.ModuleList, TimestepEmbedSequential, list[int], int]:
    """The UNet's down-sampling half and middle block, shared by :class:`UNet` and the classifier.

    Returns ``(input_blocks, middle_block, skip_channels, channels)`` where ``skip_channels`` lists
    the output width of every input block (the decoder's skip connections, in order) and
    ``channels`` is the width at the lowest resolution.
    """
    mults, emb_channels = config.resolved_channel_mult, config.embed_channels
    attention_ds = config.attention_downsample_rates

    def stage(*layers):
        return TimestepEmbedSequential(*layers, use_checkpoint=config.use_checkpoint)

    def res_block(channels, out_channels=None, **updown):
        return ResBlock(channels, emb_channels, config.dropout, out_channels,
                        config.use_scale_shift_norm, **updown)

    def attention_block(channels):
        return AttentionBlock(channels, config.num_heads, config.num_head_channels, config.use_new_attention_order)

    ch = int(mults[0] * config.model_channels)
    input_blocks = nn.ModuleList([stage(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
    skip_channels, ds = [ch], 1
    for level, mult in enumerate(mults):
        for _ in range(config.num_res_blocks):
            out_ch = int(mult * config.model_channels)
            layers = [res_block(ch, out_ch)]
            ch = out_ch
            if ds in attention_ds:
                layers.append(attention_block(ch))
            input_blocks.append(stage(*layers))
            skip_channels.append(ch)
        if level != len(mults) - 1:
            down = res_block(ch, down=True) if config.resblock_updown else Downsample(ch, config.conv_resample)
            input_blocks.append(stage(down))
            skip_channels.append(ch)
            ds *= 2
    middle_block = stage(res_block(ch), attention_block(ch), res_block(ch))
    return input_blocks, middle_block, skip_channels, ch


def check_image(x: torch.Tensor, channels: int, size: int, what: str = "input") -> None:
    """Raise a ValueError unless ``x`` is a ``(B, channels, size, size)`` batch."""
    if x.ndim != 4 or x.shape[1] != channels or tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{what} of shape {tuple(x.shape)} does not match the network, which was built "
                         f"for (B, {channels}, {size}, {size}) images")


def check_timesteps(t: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
    """Timesteps as a ``(batch,)`` tensor (a scalar is broadcast); ValueError on any other shape."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps must have shape ({batch},) (one per image), got {tuple(t.shape)}")
    return t


class UNet(nn.Module):
    """ADM UNet denoiser ``model(x_t, t, y=None) -> eps`` (or ``[eps, v]`` with ``learn_sigma``).

    Construct from a config, from keyword arguments, or both (keywords override)::

        UNet(UNetConfig(image_size=32, model_channels=64, ...))
        UNet(image_size=32, model_channels=64, ...)

    In a Lightning CLI / jsonargparse YAML the config is the one (typed) argument::

        network:
          class_path: guided_diffusion.nets.UNet
          init_args:
            config: {image_size: 32, model_channels: 64, channel_mult: [1, 2, 2, 2], num_classes: 10}

    Args:
        config: the architecture (a :class:`UNetConfig` or its ``asdict`` form).
        **overrides: :class:`UNetConfig` fields.
    """

    def __init__(self, config: UNetConfig | dict | None = None, **overrides):
        super().__init__()
        config = resolve_config(UNetConfig, config, overrides)
        if config.is_super_resolution != isinstance(self, SuperResUNet):
            raise ValueError("low_res_size is set only for super-resolution models: use SuperResUNet "
                             "(or config.build(), which picks the class)")
        self.config = config
        emb_channels, mults = config.embed_channels, config.resolved_channel_mult
        self.time_embed = nn.Sequential(
            nn.Linear(config.model_channels, emb_channels),
            nn.SiLU(),
            nn.Linear(emb_channels, emb_channels),
        )
        if config.num_classes is not None:
            self.label_emb = nn.Embedding(config.num_classes + int(config.null_class), emb_channels)

        body = dataclasses.replace(config, in_channels=self.network_in_channels, low_res_size=None)
        self.input_blocks, self.middle_block, skip_channels, ch = build_encoder(body)

        num_heads_up = config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample
        attention_ds, ds = config.attention_downsample_rates, 2 ** (len(mults) - 1)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for i in range(config.num_res_blocks + 1):
                out_ch = int(mult * config.model_channels)
                layers = [ResBlock(ch + skip_channels.pop(), emb_channels, config.dropout, out_ch,
                                   config.use_scale_shift_norm)]
                ch = out_ch
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, num_heads_up, config.num_head_channels,
                                                 config.use_new_attention_order))
                if level and i == config.num_res_blocks:
                    layers.append(ResBlock(ch, emb_channels, config.dropout, ch, config.use_scale_shift_norm, up=True)
                                  if config.resblock_updown else Upsample(ch, config.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers, use_checkpoint=config.use_checkpoint))

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, config.resolved_out_channels, 3, padding=1)),
        )

    @property
    def network_in_channels(self) -> int:
        """Channels entering the first conv (``in_channels``; doubled for super-resolution)."""
        return self.config.in_channels

    @property
    def num_classes(self) -> int | None:
        """Number of classes of a class-conditional model (``None``: unconditional); samplers read it."""
        return self.config.num_classes

    def embed(self, t: torch.Tensor, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """Timestep (+class) embedding, computed in float32 even under autocast (as the reference)."""
        num_classes = self.config.num_classes
        if num_classes is None and y is not None:
            raise ValueError("y was given but this model is unconditional (num_classes=None)")
        if num_classes is not None:
            if y is None:
                raise ValueError(f"this model is class-conditional ({num_classes} classes): pass labels y")
            if y.shape != (batch,) or y.dtype.is_floating_point or y.dtype == torch.bool:
                raise ValueError(f"y must be an integer tensor of shape ({batch},), got {y.dtype} {tuple(y.shape)}")
            num_labels = num_classes + int(self.config.null_class)  # index num_classes = "no label"
            check_index_range(y, num_labels, "label")  # no host sync on an accelerator
        t = check_timesteps(t, batch, device)
        with torch.autocast(device.type, enabled=False):
            emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(self.time_embed[0].weight.dtype))
            if y is not None:
                emb = emb + self.label_emb(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict eps (and v) for a batch.

        Args:
            x: noisy images ``(B, in_channels, image_size, image_size)``.
            t: original integer timesteps ``(B,)`` (0 .. T-1; never respaced indices).
            y: class labels ``(B,)`` for class-conditional models, else ``None``.

        Returns:
            ``(B, out_channels, image_size, image_size)`` in the dtype of ``x``.
        """
        check_image(x, self.config.in_channels, self.config.image_size)
        return self._denoise(x, self.embed(t, y, x.shape[0], x.device))

    def _denoise(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        dtype, skips = h.dtype, []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        # Output head in the input's precision (float32 under autocast), as the reference's fp16 mode.
        with torch.autocast(h.device.type, enabled=False):
            return self.out(h.to(dtype))


class SuperResUNet(UNet):
    """ADM upsampler ``model(x_t, t, y=None, low_res=...)``: a UNet conditioned on a low-res image.

    ``low_res`` (``(B, in_channels, low_res_size, low_res_size)``) is bilinearly up-sampled to
    ``image_size`` and concatenated to ``x_t``, so the first conv sees ``2 * in_channels`` channels.
    """

    @property
    def network_in_channels(self) -> int:
        return 2 * self.config.in_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                low_res: torch.Tensor | None = None) -> torch.Tensor:
        config = self.config
        check_image(x, config.in_channels, config.image_size)
        if low_res is None:
            raise ValueError("SuperResUNet needs the low-resolution image: pass low_res=...")
        check_image(low_res, config.in_channels, config.low_res_size, what="low_res")
        if low_res.shape[0] != x.shape[0]:
            raise ValueError(f"low_res batch {low_res.shape[0]} differs from x batch {x.shape[0]}")
        upsampled = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
        h = torch.cat([x, upsampled.to(x.dtype)], dim=1)
        return self._denoise(h, self.embed(t, y, x.shape[0], x.device))
