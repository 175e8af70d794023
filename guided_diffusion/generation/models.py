"""The networks of a sampling run, loaded from files the user names and checked against each other.

A diffusion model comes from this project's Lightning checkpoint (``.ckpt``: the architecture and
diffusion are read from the file) or from a released OpenAI ``.pt`` (architecture from a preset,
named or detected from the keys). The classifier likewise. Everything that can be wrong about the
pair — a classifier for another image size, class count or noise schedule, a guidance the model
cannot do — is reported here, before any sampling work starts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from torch import nn

from ..diffusion import GaussianDiffusion
from ..torch_files import check_torch_file
from ..sampling import ClassifierFreeGuidance, ClassifierGuidance, Guidance, check_scale

GuidanceKind = Literal["auto", "none", "classifier", "classifier-free"]


@dataclass
class LoadedNetwork:
    """A network with the diffusion it was trained with and where it came from."""

    network: nn.Module
    diffusion: GaussianDiffusion
    source: str
    """Human-readable origin, e.g. ``"model.ckpt (step 300, EMA)"``."""
    null_label: Optional[int] = None
    """Label index meaning "no label" (classifier-free guidance), if the model was trained with one."""

    @property
    def config(self):
        return self.network.config

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(self.config, "num_classes", None)


def _existing(path: str | os.PathLike, what: str) -> Path:
    return check_torch_file(path, f"{what} checkpoint")


def _is_lightning_checkpoint(path: Path) -> bool:
    return path.suffix == ".ckpt"


def load_diffusion_model(checkpoint: str | os.PathLike, preset: Optional[str] = None, ema: bool = True
                         ) -> LoadedNetwork:
    """The diffusion network of ``checkpoint`` (``.ckpt``: this project's; otherwise an OpenAI ``.pt``)."""
    from ..checkpoints import load_openai_checkpoint
    from ..training.checkpoint_io import load_diffusion_checkpoint

    path = _existing(checkpoint, "diffusion model")
    if _is_lightning_checkpoint(path):
        if preset is not None:
            raise ValueError(f"--preset is for OpenAI .pt files; {path.name} carries its own architecture")
        network, diffusion, info = load_diffusion_checkpoint(path, ema=ema)
        weights = "EMA" if ema else "raw"
        return LoadedNetwork(network, diffusion, f"{path} (step {info['global_step']}, {weights} weights)",
                             info["null_label"])
    network, found = load_openai_checkpoint(path, preset)
    if found.kind != "unet":
        raise ValueError(f"{path.name} is a {found.kind!r} network (preset {found.name!r}), not a diffusion model"
                         + (" (super-resolution models need a low-resolution input)" if "superres" in found.kind
                            else ""))
    return LoadedNetwork(network.eval(), found.diffusion.build(), f"{path} (OpenAI, preset {found.name})")


def load_classifier(checkpoint: str | os.PathLike, preset: Optional[str] = None) -> LoadedNetwork:
    """The noise-aware classifier of ``checkpoint`` (``.ckpt``: this project's; otherwise an OpenAI ``.pt``)."""
    from ..checkpoints import load_openai_checkpoint
    from ..training.checkpoint_io import load_classifier_checkpoint

    path = _existing(checkpoint, "classifier")
    if _is_lightning_checkpoint(path):
        if preset is not None:
            raise ValueError(f"--classifier_preset is for OpenAI .pt files; {path.name} carries its own architecture")
        network, diffusion, info = load_classifier_checkpoint(path)
        return LoadedNetwork(network, diffusion, f"{path} (step {info['global_step']})")
    network, found = load_openai_checkpoint(path, preset)
    if found.kind != "encoder_unet":
        raise ValueError(f"{path.name} is a {found.kind!r} network (preset {found.name!r}), not a classifier")
    return LoadedNetwork(network.eval(), found.diffusion.build(), f"{path} (OpenAI, preset {found.name})")


def check_pair(model: LoadedNetwork, classifier: LoadedNetwork) -> None:
    """The classifier must read the model's x_t: same image size, channels, classes and noise process."""
    m, c = model.config, classifier.config
    if (c.image_size, c.in_channels) != (m.image_size, m.in_channels):
        raise ValueError(f"the classifier takes {c.in_channels}x{c.image_size}x{c.image_size} images but the model "
                         f"makes {m.in_channels}x{m.image_size}x{m.image_size} ({classifier.source})")
    if model.num_classes is not None and c.num_classes != model.num_classes:
        raise ValueError(f"the classifier knows {c.num_classes} classes but the model {model.num_classes}")
    a, b = model.diffusion, classifier.diffusion
    if a.num_timesteps != b.num_timesteps or not np.allclose(a.alphas_cumprod, b.alphas_cumprod, rtol=1e-6):
        raise ValueError(f"the classifier was trained on another noise process ({b.num_timesteps} steps) than the "
                         f"model ({a.num_timesteps} steps, or a different schedule): its gradients would be wrong")


def build_guidance(kind: GuidanceKind, scale: float, model: LoadedNetwork,
                   classifier: Optional[LoadedNetwork]) -> Optional[Guidance]:
    """The guidance object of a run; ``auto`` = classifier guidance if a classifier is given, else none."""
    scale = check_scale(scale)
    if kind == "auto":
        kind = "classifier" if classifier is not None else "none"
    if kind == "classifier":
        if classifier is None:
            raise ValueError("classifier guidance needs --classifier PATH")
        check_pair(model, classifier)
        return ClassifierGuidance(classifier.network, scale)
    if classifier is not None:
        raise ValueError(f"a classifier was given but guidance is {kind!r}")
    if kind == "classifier-free":
        if model.null_label is None:
            raise ValueError("classifier-free guidance needs a model trained with label dropout (no null label "
                             "in this checkpoint)")
        return ClassifierFreeGuidance(scale, model.null_label)
    return None


def label_count(model: LoadedNetwork, classifier: Optional[LoadedNetwork]) -> Optional[int]:
    """How many classes labels range over (the model's, else the guiding classifier's, else none)."""
    if model.num_classes is not None:
        return model.num_classes
    return classifier.num_classes if classifier is not None else None


def freeze(network: nn.Module) -> nn.Module:
    """Sampling never trains: eval mode, no parameter gradients (guidance differentiates w.r.t. x only)."""
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


__all__ = ["LoadedNetwork", "GuidanceKind", "load_diffusion_model", "load_classifier", "check_pair",
           "build_guidance", "label_count", "freeze"]
