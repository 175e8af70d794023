"""Any ``timm`` image model as a noise-aware classifier ``classifier(x_t, t) -> logits``.

The timestep enters the way ADM's networks take it: sinusoidal features of the original integer
timestep t, an MLP, and the result is *added to the stem features* (the output of the model's
first ``feature_info`` stage: ``act1`` of a ResNet, ``stages.0`` of a ConvNeXt, ``blocks.0`` of a
ViT). The MLP's last layer starts at zero, so a pretrained trunk is unchanged at initialisation.

Pretrained weights come only from a local file (``pretrained_path``; timm adapts the input
channels and drops a classifier head of the wrong size); nothing is ever downloaded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .layers import timestep_embedding, zero_module
from .unet import check_image, check_timesteps

__all__ = ["TimmClassifierConfig", "TimmNoisyClassifier"]


@dataclass
class TimmClassifierConfig:
    """Architecture of a timm-trunk noise-aware classifier."""

    model_name: str = "resnet18"
    """A ``timm.list_models()`` name (no ``hf-hub:`` names: nothing is downloaded)."""
    image_size: int = 64
    """Side of the square input images."""
    in_channels: int = 3
    """Channels of the input images."""
    num_classes: int = 1000
    """Number of output logits."""
    time_embed_dim: int = 128
    """Width of the sinusoidal timestep features fed to the embedding MLP."""
    pretrained_path: Optional[str] = None
    """Local weights file (``.pth``/``.safetensors``) for the trunk; ``None`` = random init."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``timm.create_model`` arguments, e.g. ``{"img_size": 64}`` for a ViT, ``{"drop_path_rate": 0.1}``."""

    def __post_init__(self):
        if ":" in self.model_name:
            raise ValueError(f"timm model {self.model_name!r}: hub names are not allowed (nothing is downloaded); "
                             "use a timm.list_models() name and pretrained_path for local weights")
        remote = sorted(set(self.model_kwargs) & {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay"})
        if remote:
            raise ValueError(f"model_kwargs {remote}: weights come only from pretrained_path (nothing is downloaded)")
        if self.pretrained_path is not None and not Path(self.pretrained_path).is_file():
            raise FileNotFoundError(f"pretrained_path {self.pretrained_path!r} does not exist")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def build(self) -> "TimmNoisyClassifier":
        return TimmNoisyClassifier(self)


class TimmNoisyClassifier(nn.Module):
    """``classifier(x_t, t) -> logits`` on a timm trunk with timestep conditioning at the stem.

    Args:
        config: the architecture (a :class:`TimmClassifierConfig` or its ``asdict`` form).
    """

    def __init__(self, config: TimmClassifierConfig | dict):
        super().__init__()
        import timm

        if isinstance(config, dict):
            config = TimmClassifierConfig(**config)
        self.config = config
        if config.model_name not in timm.list_models():
            raise ValueError(f"unknown timm model {config.model_name!r} (see timm.list_models())")
        local_weights = {}
        if config.pretrained_path is not None:
            # A local file only: with ``file`` set and url/hub id cleared, timm has no remote source.
            local_weights = dict(pretrained=True, pretrained_cfg_overlay=dict(
                file=str(config.pretrained_path), url=None, hf_hub_id=None, source=None))
        self.trunk = timm.create_model(config.model_name, num_classes=config.num_classes,
                                       in_chans=config.in_channels, **local_weights, **config.model_kwargs)
        feature_info = getattr(self.trunk, "feature_info", None)
        if not feature_info:
            raise ValueError(f"timm model {config.model_name!r} has no feature_info: cannot find its stem "
                             "to inject the timestep embedding")
        stem = feature_info[0]
        self.stem_name, stem_channels = stem["module"], stem["num_chs"]
        hidden = 4 * config.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(config.time_embed_dim, hidden), nn.SiLU(),
                                        zero_module(nn.Linear(hidden, stem_channels)))
        self.trunk.get_submodule(self.stem_name).register_forward_hook(self._add_timestep)
        self._embedding: Optional[torch.Tensor] = None

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def _add_timestep(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        emb = self._embedding
        if emb is None:
            raise RuntimeError("call the classifier as classifier(x_t, t), not its trunk directly")
        channels = emb.shape[-1]
        if output.ndim == 4 and output.shape[1] == channels:      # NCHW feature map
            return output + emb[:, :, None, None].to(output.dtype)
        if output.shape[-1] == channels:                           # tokens (B, N, C) or NHWC
            return output + emb.reshape(emb.shape[0], *([1] * (output.ndim - 2)), channels).to(output.dtype)
        raise RuntimeError(f"stem output {tuple(output.shape)} of {self.stem_name!r} has no {channels}-channel axis")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for noisy images ``x`` at original integer timesteps ``t``."""
        config = self.config
        check_image(x, config.in_channels, config.image_size)
        t = check_timesteps(t, x.shape[0], x.device)
        with torch.autocast(x.device.type, enabled=False):
            features = timestep_embedding(t, config.time_embed_dim).to(self.time_embed[0].weight.dtype)
            self._embedding = self.time_embed(features)
        try:
            return self.trunk(x)
        finally:
            self._embedding = None
