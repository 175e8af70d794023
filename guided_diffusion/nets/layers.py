"""Building blocks of the ADM networks ("Diffusion Models Beat GANs", Dhariwal & Nichol 2021).

Every module here keeps the parameter names of OpenAI's guided-diffusion code, so that a released
checkpoint's state dict loads key for key (``in_layers.2.weight``, ``emb_layers.1.weight``,
``out_layers.3.weight``, ``skip_connection``, ``qkv``/``proj_out`` stored as ``Conv1d`` weights of
shape ``(3C, C, 1)``/``(C, C, 1)``, ``op`` for a strided down-sampling conv, ``conv`` for an
up-sampling conv, ``positional_embedding``/``qkv_proj``/``c_proj`` for attention pooling).

Precision: the networks compute in the dtype of their input and are meant to be run under
``torch.autocast`` for bf16/fp16. Two operations are always evaluated in float32, as the reference
does in its fp16 mode: GroupNorm statistics (:class:`GroupNorm32`) and the attention softmax
(:func:`attention`).

Layout: attention works on tokens ``(B, T, C)`` (``T = H * W``) so that the 1x1 projections are
plain matrix products and the head split is a view; this is numerically the reference's
``(B, C, T)`` formulation.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "timestep_embedding",
    "GroupNorm32",
    "normalization",
    "zero_module",
    "num_attention_heads",
    "attention",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "Upsample",
    "Downsample",
    "ResBlock",
    "QKVAttention",
    "QKVAttentionLegacy",
    "AttentionBlock",
    "AttentionPool2d",
]

GROUPNORM_GROUPS = 32
REDUCED_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# Small helpers


def timestep_embedding(t: torch.Tensor | int | float, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, ``[cos, sin]`` as in ADM.

    Frequencies are ``max_period ** (-i / (dim // 2))`` for ``i < dim // 2``; the result has shape
    ``(N, dim)`` in float32 (a zero column is appended when ``dim`` is odd).

    Args:
        t: timesteps, a Python number, a 0-d tensor or a 1-d tensor of N values (int or float).
        dim: embedding width.
        max_period: controls the lowest frequency.
    """
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a scalar or a 1-d tensor, got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are computed in float32 whatever the input dtype.

    The output has the input's dtype. As in the reference's ``GroupNorm32``, reduced-precision
    activations (bf16/fp16 under autocast) are normalised in float32: on CUDA and other devices the
    input is upcast, normalised and cast back. On CPU, PyTorch's group-norm kernel accepts
    reduced-precision input with float32 affine parameters and accumulates the statistics in
    float32 itself, which gives the same result without two extra passes over the activations
    (their share of a bf16 training step: docs/benchmarks.md).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        if _group_norm_accumulates_in_float32(x):
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _group_norm_accumulates_in_float32(x: torch.Tensor) -> bool:
    """Whether ``F.group_norm`` on ``x`` with float32 parameters computes its statistics in float32."""
    return x.dtype in REDUCED_PRECISION and x.device.type == "cpu"


def normalization(channels: int) -> GroupNorm32:
    """The ADM normalisation layer: GroupNorm with 32 groups, statistics in float32."""
    return GroupNorm32(GROUPNORM_GROUPS, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-initialise all parameters of ``module`` (output convs of residual branches) and return it."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def num_attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Number of heads of an attention layer on ``channels`` channels.

    ``num_head_channels > 0`` fixes the width of each head (ADM: 64); ``-1`` uses ``num_heads``.
    """
    if num_head_channels == -1:
        heads = num_heads
    elif num_head_channels > 0:
        if channels % num_head_channels:
            raise ValueError(f"{channels} attention channels are not divisible by "
                             f"num_head_channels={num_head_channels}")
        heads = channels // num_head_channels
    else:
        raise ValueError(f"num_head_channels must be -1 or positive, got {num_head_channels}")
    if heads < 1 or channels % heads:
        raise ValueError(f"{channels} attention channels cannot be split into {heads} heads")
    return heads


AttentionPath = Literal["auto", "fused", "float32"]
#: Devices whose fused ``scaled_dot_product_attention`` kernels (flash / memory-efficient) take bf16/fp16
#: inputs and accumulate the softmax in float32 themselves: reduced-precision attention runs there as is.
FUSED_ATTENTION_DEVICES = ("cuda",)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, path: AttentionPath = "auto") -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` on ``(B, heads, T, d)`` tensors, the softmax accumulated in float32.

    Both paths call :func:`torch.nn.functional.scaled_dot_product_attention`; they differ only for
    bf16/fp16 inputs or under autocast:

    - ``"fused"``: q, k, v in the reduced dtype (autocast's, or the inputs') straight into the
      kernel. On CUDA that is the flash / memory-efficient kernel, which keeps the softmax's running
      max and sum in float32 (as the reference's fp16 mode, ``softmax(w.float())``) and never
      materialises the T x T weights: the fast path at the 32/16/8 attention resolutions of ADM.
    - ``"float32"``: upcast, autocast off, the product in float32, cast back. On CPU this is faster
      than the reduced-precision kernel (``benchmarks/bench_unet.py``).

    ``"auto"`` picks ``"fused"`` on :data:`FUSED_ATTENTION_DEVICES`, ``"float32"`` elsewhere. The
    result has the dtype of ``q``.
    """
    device_type = q.device.type
    autocast = torch.is_autocast_enabled(device_type)
    if not (q.dtype in REDUCED_PRECISION or autocast):
        return F.scaled_dot_product_attention(q, k, v)
    if path == "auto":
        path = "fused" if device_type in FUSED_ATTENTION_DEVICES else "float32"
    if path == "fused":
        dtype = torch.get_autocast_dtype(device_type) if autocast else q.dtype
        return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype)).to(q.dtype)
    if path != "float32":
        raise ValueError(f"attention path must be 'auto', 'fused' or 'float32', got {path!r}")
    with torch.autocast(device_type, enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return out.to(q.dtype)


# ----------------------------------------------------------------------------------------------
# Containers


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep(+class) embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """One UNet stage (e.g. ResBlock + AttentionBlock): passes ``emb`` to the children that take it.

    With ``use_checkpoint`` the whole stage is recomputed in the backward pass instead of storing
    its activations (``torch.utils.checkpoint``, non-reentrant; RNG state is restored so dropout
    masks match).
    """

    def __init__(self, *layers: nn.Module, use_checkpoint: bool = False):
        super().__init__(*layers)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._run, x, emb, use_reentrant=False)
        return self._run(x, emb)

    def _run(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


# ----------------------------------------------------------------------------------------------
# Resampling


class Upsample(nn.Module):
    """Nearest-neighbour 2x up-sampling, optionally followed by a 3x3 convolution (key ``conv``).

    Args:
        channels: input channels.
        use_conv: apply a learned 3x3 convolution after up-sampling.
        out_channels: output channels of the convolution (default ``channels``).
    """

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        elif self.out_channels != channels:
            raise ValueError("Upsample without a convolution cannot change the number of channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    """2x down-sampling: a strided 3x3 convolution (key ``op``) or 2x2 average pooling.

    Args:
        channels: input channels.
        use_conv: use a learned stride-2 convolution instead of average pooling.
        out_channels: output channels of the convolution (default ``channels``).
    """

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        elif self.out_channels == channels:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)
        else:
            raise ValueError("Downsample without a convolution cannot change the number of channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


# ----------------------------------------------------------------------------------------------
# Residual block


class ResBlock(TimestepBlock):
    """ADM residual block conditioned on the timestep(+class) embedding.

    ``in_layers``: GroupNorm, SiLU, 3x3 conv. The embedding enters through ``emb_layers`` (SiLU,
    Linear), either additively (DDPM) or -- with ``use_scale_shift_norm`` -- as adaptive group
    normalisation (AdaGN): ``GroupNorm(h) * (1 + scale) + shift``. ``out_layers``: GroupNorm, SiLU,
    dropout, zero-initialised 3x3 conv. With ``up``/``down`` it is the BigGAN-style resampling
    block: the (nearest / average-pool) resampling happens inside the block, before ``in_layers``'
    conv, on both the residual and the skip path.

    Args:
        channels: input channels.
        emb_channels: width of the timestep embedding.
        dropout: dropout probability before the last convolution.
        out_channels: output channels (default ``channels``); a 1x1 conv adapts the skip path.
        use_scale_shift_norm: AdaGN conditioning instead of adding the embedding.
        up: up-sample by 2 inside the block.
        down: down-sample by 2 inside the block.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float = 0.0, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        if up and down:
            raise ValueError("a ResBlock cannot both up- and down-sample")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
        h = norm_act(x)
        if self.updown:
            h, x = self.h_upd(h), self.x_upd(x)
        h = conv(h)

        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_norm(h) * (1 + scale) + shift  # AdaGN (this form, not addcmul: faster in bf16 on CPU)
        else:
            h = out_norm(h + emb_out)
        return self.skip_connection(x) + out_rest(h)


# ----------------------------------------------------------------------------------------------
# Attention


class _QKVAttention(nn.Module):
    """Multi-head attention on fused ``qkv`` tokens ``(B, T, 3 * heads * d)`` -> ``(B, T, heads * d)``.

    Subclasses differ only in how the fused channel axis is split into (q|k|v, head, d).
    """

    #: einops pattern splitting the fused channel axis into q, k, v of shape (B, heads, T, d).
    split_pattern: str

    def __init__(self, num_heads: int):
        super().__init__()
        self.num_heads = num_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        if qkv.shape[-1] % (3 * self.num_heads):
            raise ValueError(f"qkv width {qkv.shape[-1]} is not divisible by 3 * {self.num_heads} heads")
        q, k, v = rearrange(qkv, self.split_pattern, three=3, h=self.num_heads)
        return rearrange(attention(q, k, v), "b h t d -> b t (h d)")

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"


class QKVAttentionLegacy(_QKVAttention):
    """Reference ordering of the original DDPM/improved-diffusion models: heads first.

    The reference reshapes qkv ``(B, 3*H*d, T)`` to ``(B*H, 3*d, T)`` and then splits q, k, v, i.e.
    the channel axis is laid out as ``(head, q|k|v, d)``.
    """

    split_pattern = "b t (h three d) -> three b h t d"


class QKVAttention(_QKVAttention):
    """Newer ordering (``use_new_attention_order``, attention pooling): q, k, v first.

    The reference chunks qkv into q, k, v and then splits each into heads, i.e. the channel axis is
    laid out as ``(q|k|v, head, d)``. Identical weights give different outputs than the legacy order.
    """

    split_pattern = "b t (three h d) -> three b h t d"


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)`` (a view for channels-last tensors)."""
    return x.flatten(2).transpose(1, 2)


def _conv1x1(tokens: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Apply a kernel-size-1 ``Conv1d`` (OpenAI key layout) to ``(B, T, C)`` tokens as a matmul."""
    return F.linear(tokens, conv.weight.squeeze(-1), conv.bias)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions with a residual connection.

    ``x + proj_out(attention(qkv(norm(x))))`` with ``proj_out`` zero-initialised.

    Args:
        channels: input and output channels.
        num_heads: number of heads when ``num_head_channels == -1``.
        num_head_channels: fixed width of each head (overrides ``num_heads``), ``-1`` to disable.
        use_new_attention_order: split q, k, v before heads (:class:`QKVAttention`) instead of the
            legacy heads-first ordering (:class:`QKVAttentionLegacy`).
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        self.channels = channels
        self.num_heads = num_attention_heads(channels, num_heads, num_head_channels)
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        attention_cls = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.attention = attention_cls(self.num_heads)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.attention(_conv1x1(_tokens(self.norm(x)), self.qkv))
        h = _conv1x1(h, self.proj_out)
        return x + h.transpose(1, 2).reshape(b, c, height, width)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends over all positions (classifier head).

    Tokens are the ``H*W`` positions plus their mean (first), with a learned positional embedding of
    shape ``(C, H*W + 1)``; the output is the mean token's projection, shape ``(B, output_dim)``.

    Args:
        spatial_dim: side length of the (square) input feature map.
        embed_dim: input channels.
        num_head_channels: width of each attention head.
        output_dim: output width (default ``embed_dim``).
    """

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int | None = None):
        super().__init__()
        self.spatial_dim = spatial_dim
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim or embed_dim, 1)
        self.num_heads = num_attention_heads(embed_dim, 1, num_head_channels)
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = _tokens(x)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.t().to(tokens.dtype)
        h = self.attention(_conv1x1(tokens, self.qkv_proj))
        return _conv1x1(h[:, 0], self.c_proj)
