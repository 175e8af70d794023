"""The networks of a sampling run checked against each other, and the guidance they make.

The files are read by :mod:`guided_diffusion.checkpoints` (every kind the project accepts).
Everything that can be wrong about the pair — a classifier for another image size, class count or
noise schedule, a guidance the model cannot do — is reported here, before any sampling work starts.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
from torch import nn

from ..checkpoints import LoadedNetwork
from ..guidance import (ClassifierFreeGuidance, ClassifierGuidance, Guidance, GuidanceChain, IntervalVariable,
                        ScheduleName, check_scale)

GuidanceKind = Literal["auto", "none", "classifier", "classifier-free"]


def parse_interval(text: Optional[str], what: str = "guidance interval") -> Optional[tuple[float, float]]:
    """``"lo,hi"`` (``inf`` allowed; ``none`` / empty: no interval) as a pair of floats."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    parts = [part.strip() for part in str(text).split(",")]
    try:
        lo, hi = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"{what} must be 'lo,hi' (numbers, 'inf' allowed), got {text!r}") from None
    if not (lo >= 0 and (math.isfinite(hi) or hi == math.inf) and math.isfinite(lo) and lo <= hi):
        raise ValueError(f"{what} {text!r}: need 0 <= lo <= hi")
    return lo, hi


def _no_classifier(x, t):
    raise AssertionError("never called")


@dataclass(frozen=True)
class GuidanceOptions:
    """Where, how much and how cheaply a run guides (``gd sample`` / ``gd sweep`` options; see
    :mod:`guided_diffusion.guidance`).

    Args:
        schedule: the classifier scale's schedule over tau = t / (T - 1): ``constant``, ``linear``, ``cosine``.
        interval: classifier guidance only where ``interval_in`` lies in ``"lo,hi"`` (``None``: every step).
        interval_in: ``t`` (model timestep 0..T-1) or ``sigma`` (sigma_t / alpha_t) for both intervals.
        temperature: divides the classifier's logits.
        gradient_at: ``x_t`` (ADM) or ``x0`` (the gradient at the predicted x_0, classifier at t = 0).
        every: evaluate the classifier gradient every k guided steps and reuse it in between.
        cfg_scale: classifier-free guidance w as well as classifier guidance (a model trained with label dropout).
        cfg_interval: classifier-free guidance only in ``"lo,hi"`` (w = 1 outside).
    """

    schedule: ScheduleName = "constant"
    interval: Optional[str] = None
    interval_in: IntervalVariable = "t"
    temperature: float = 1.0
    gradient_at: Literal["x_t", "x0"] = "x_t"
    every: int = 1
    cfg_scale: Optional[float] = None
    cfg_interval: Optional[str] = None

    def __post_init__(self):
        ClassifierGuidance(_no_classifier, 1.0, **self.classifier_options())  # its checks, before any model loads
        parse_interval(self.cfg_interval, "classifier-free guidance interval")
        if self.cfg_scale is not None:
            check_scale(self.cfg_scale, "classifier-free guidance scale")

    def settings(self) -> dict:
        """What a run's identity records (run.json)."""
        return dataclasses.asdict(self)

    def classifier_options(self) -> dict:
        return dict(schedule=self.schedule, interval=parse_interval(self.interval), interval_in=self.interval_in,
                    temperature=self.temperature, gradient_at=self.gradient_at, every=self.every)

    @property
    def classifier_default(self) -> bool:
        return self.classifier_options() == GuidanceOptions().classifier_options()


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


def build_guidance(kind: GuidanceKind, scale: float, model: LoadedNetwork, classifier: Optional[LoadedNetwork],
                   options: GuidanceOptions = GuidanceOptions()) -> Optional[Guidance]:
    """The guidance object of a run; ``auto`` = classifier guidance if a classifier is given, else none.
    ``options.cfg_scale`` adds classifier-free guidance in front of classifier guidance."""
    scale = check_scale(scale)
    if kind == "auto":
        kind = "classifier" if classifier is not None else "none"
    cfg_interval = parse_interval(options.cfg_interval, "classifier-free guidance interval")
    if kind != "classifier" and not options.classifier_default:
        raise ValueError("--schedule, --guidance_interval, --temperature, --gradient_at and --guidance_every "
                         "shape classifier guidance: give --classifier PATH")
    if kind == "classifier":
        if classifier is None:
            raise ValueError("classifier guidance needs --classifier PATH")
        check_pair(model, classifier)
        guiding = ClassifierGuidance(classifier.network, scale, **options.classifier_options())
        if options.cfg_scale is None:
            if cfg_interval is not None:
                raise ValueError("--cfg_interval needs classifier-free guidance (--cfg_scale W)")
            return guiding
        free = _classifier_free(model, options.cfg_scale, cfg_interval, options.interval_in)
        return GuidanceChain([free, guiding])
    if classifier is not None:
        raise ValueError(f"a classifier was given but guidance is {kind!r}")
    if options.cfg_scale is not None:
        raise ValueError("--cfg_scale combines classifier-free with classifier guidance (give --classifier); "
                         "for classifier-free guidance alone use --guidance classifier-free --scale W")
    if kind == "classifier-free":
        return _classifier_free(model, scale, cfg_interval, options.interval_in)
    if cfg_interval is not None:
        raise ValueError("--cfg_interval needs classifier-free guidance")
    return None


def _classifier_free(model: LoadedNetwork, scale: float, interval, interval_in) -> ClassifierFreeGuidance:
    if model.null_label is None:
        raise ValueError("classifier-free guidance needs a model trained with label dropout (no null label "
                         "in this checkpoint)")
    return ClassifierFreeGuidance(scale, model.null_label, interval=interval, interval_in=interval_in)


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


__all__ = ["GuidanceKind", "GuidanceOptions", "parse_interval", "check_pair", "check_upsampler", "build_guidance",
           "label_count", "freeze"]
