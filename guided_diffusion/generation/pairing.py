"""The networks of a sampling run checked against each other.

The files are read by :mod:`guided_diffusion.checkpoints` (every kind the project accepts).
Everything that can be wrong about the pair — a classifier for another image size, class count or
noise schedule, a guidance the model cannot do — is reported here, before any sampling work starts.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from torch import nn

from ..checkpoints import LoadedNetwork


def check_pair(model: LoadedNetwork, classifier: LoadedNetwork, *, clean: bool = False) -> None:
    """The classifier must read the model's x_t: same image size, channels, classes and noise process (``clean``:
    a classifier of clean images reads the predicted x_0, so only the images and classes must agree)."""
    m, c = model.config, classifier.config
    if (c.image_size, c.in_channels) != (m.image_size, m.in_channels):
        raise ValueError(f"the classifier takes {c.in_channels}x{c.image_size}x{c.image_size} images but the model "
                         f"makes {m.in_channels}x{m.image_size}x{m.image_size} ({classifier.source})")
    if model.num_classes is not None and c.num_classes != model.num_classes:
        raise ValueError(f"the classifier knows {c.num_classes} classes but the model {model.num_classes}")
    a, b = model.diffusion, classifier.diffusion
    if clean:
        return
    if a.num_timesteps != b.num_timesteps or not np.allclose(a.alphas_cumprod, b.alphas_cumprod, rtol=1e-6):
        raise ValueError(f"the classifier was trained on another noise process ({b.num_timesteps} steps) than the "
                         f"model ({a.num_timesteps} steps, or a different schedule): its gradients would be wrong")


def check_guide(model: LoadedNetwork, guide: LoadedNetwork, *, classifier_free: bool = False) -> None:
    """An autoguidance guide must be a model of the same task: same image size and channels (and low-resolution
    input for an upsampler), the same classes (or none), the same noise process and the same prediction target
    (eps, x_0 or v), so that D_0 + w (D_1 - D_0) combines like with like. With classifier-free guidance a
    class-conditional guide also needs the null label (it is called on the unconditional branch too)."""
    m, g = model.config, guide.config
    if (g.image_size, g.in_channels) != (m.image_size, m.in_channels):
        raise ValueError(f"the guide model makes {g.in_channels}x{g.image_size}x{g.image_size} images but the model "
                         f"{m.in_channels}x{m.image_size}x{m.image_size} ({guide.source})")
    if getattr(g, "low_res_size", None) != getattr(m, "low_res_size", None):
        raise ValueError(f"the guide model and the model read different low-resolution inputs ({guide.source})")
    if guide.num_classes is not None and guide.num_classes != model.num_classes:
        raise ValueError(f"the guide model knows {guide.num_classes} classes but the model "
                         f"{model.num_classes or 'none (unconditional)'}: a guide is the same task, weaker")
    a, b = model.diffusion, guide.diffusion
    if a.num_timesteps != b.num_timesteps or not np.allclose(a.alphas_cumprod, b.alphas_cumprod, rtol=1e-6):
        raise ValueError(f"the guide model was trained on another noise process ({b.num_timesteps} steps, or a "
                         f"different schedule) than the model ({a.num_timesteps} steps)")
    if a.mean_type != b.mean_type:
        raise ValueError(f"the guide model predicts {b.mean_type} but the model {a.mean_type}: autoguidance combines "
                         "predictions of the same target")
    if classifier_free and guide.num_classes is not None and guide.null_label is None:
        raise ValueError("with classifier-free guidance a class-conditional guide model needs the null label (trained "
                         "with label dropout); use an unconditional guide or one trained with label dropout")


def check_upsampler(upsampler: LoadedNetwork, image_size: int, channels: int, num_classes: Optional[int],
                    what: str) -> None:
    """The upsampler must read ``what`` (images of ``image_size`` px, ``channels`` channels, labels over
    ``num_classes`` classes or none) as its low-resolution input; a class-conditional one needs the labels."""
    u = upsampler.config
    if (u.low_res_size, u.in_channels) != (image_size, channels):
        raise ValueError(f"the upsampler takes {u.in_channels}x{u.low_res_size}x{u.low_res_size} low-resolution "
                         f"images but {what} are {channels}x{image_size}x{image_size} ({upsampler.source})")
    if upsampler.num_classes is not None:
        if num_classes is None:
            raise ValueError(f"the upsampler is class-conditional ({upsampler.num_classes} classes) but {what} have "
                             "no labels")
        if num_classes > upsampler.num_classes:
            raise ValueError(f"the upsampler knows {upsampler.num_classes} classes but the labels of {what} range "
                             f"over {num_classes}")


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


__all__ = ["check_pair", "check_guide", "check_upsampler", "label_count", "freeze"]
