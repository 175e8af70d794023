"""The guidance option group: every guidance setting of a sampling run, declared once.

``gd sample``, ``gd sweep`` and ``gd demo`` take this group (its fields are their ``--scale``, ``--schedule``,
... options), and :meth:`GuidanceOptions.build` turns it into the guidance object the samplers take:

- ``classifier``: :class:`~.kinds.ClassifierGuidance` with the noise-aware classifier, mean shift
  mu + s Sigma grad log p(y | x_t) (ancestral steps) or eps shift eps - sqrt(1 - abar_t) s grad log p(y | x_t);
- ``classifier-free``: :class:`~.kinds.ClassifierFreeGuidance`, eps_null + w (eps_y - eps_null);
- both (``cfg_scale`` with a classifier): classifier-free guidance first, then classifier guidance on its
  prediction (:class:`~.kinds.GuidanceChain`).

Every value is checked when the group is made, before any model loads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from ..option_groups import check_choices
from .kinds import ClassifierFreeGuidance, ClassifierGuidance, Guidance, GuidanceChain
from .levels import GuidanceScale, IntervalVariable, ScheduleName, check_scale, parse_interval

GuidanceKind = Literal["auto", "none", "classifier", "classifier-free"]


def _never_called(x, t):
    raise AssertionError("never called")


@dataclass(frozen=True)
class GuidanceOptions:
    """Guidance: what guides the samples, how much, where and how cheaply.

    Args:
        guidance: ``auto`` (classifier guidance when a classifier is given, else none), ``none``, ``classifier``
            or ``classifier-free`` (a model trained with label dropout).
        scale: guidance scale (classifier: s in mu + s Sigma grad log p(y|x_t); classifier-free: w).
        schedule: the classifier scale over tau = t / (T - 1): ``constant`` (ADM), ``linear`` s 2 (1 - tau) or
            ``cosine`` s (1 + cos pi tau) (both average s and grow as sampling proceeds).
        guidance_interval: classifier guidance only where ``interval_in`` lies in ``"lo,hi"`` (e.g. ``"0,600"``
            in t, ``"0.3,5"`` in sigma); outside, the classifier is not evaluated.
        interval_in: ``t`` (the model timestep 0..T-1) or ``sigma`` (sigma_t / alpha_t), for both intervals.
        temperature: T dividing the classifier's logits (calibration; 1 = as trained).
        gradient_at: ``x_t`` (ADM) or ``x0``: the classifier's gradient at the predicted x_0 (at t = 0).
        guidance_every: evaluate the classifier gradient every k guided steps, reuse it in between.
        cfg_scale: classifier-free guidance w in addition to classifier guidance (``--scale``), for a model
            trained with label dropout.
        cfg_interval: classifier-free guidance only in ``"lo,hi"`` (w = 1 outside: one batch).
    """

    guidance: GuidanceKind = "auto"
    scale: GuidanceScale = 1.0
    schedule: ScheduleName = "constant"
    guidance_interval: Optional[str] = None
    interval_in: IntervalVariable = "t"
    temperature: float = 1.0
    gradient_at: Literal["x_t", "x0"] = "x_t"
    guidance_every: int = 1
    cfg_scale: Optional[GuidanceScale] = None
    cfg_interval: Optional[str] = None

    def __post_init__(self):
        check_choices(self)
        object.__setattr__(self, "scale", check_scale(self.scale))
        ClassifierGuidance(_never_called, 1.0, **self._classifier_options())  # its own checks, made once
        parse_interval(self.cfg_interval, "classifier-free guidance interval")
        if self.cfg_scale is not None:
            object.__setattr__(self, "cfg_scale", check_scale(self.cfg_scale, "classifier-free guidance scale"))

    def _classifier_options(self) -> dict[str, Any]:
        return dict(schedule=self.schedule, interval=parse_interval(self.guidance_interval),
                    interval_in=self.interval_in, temperature=self.temperature, gradient_at=self.gradient_at,
                    every=self.guidance_every)

    @property
    def shapes_classifier_guidance(self) -> bool:
        """Whether a classifier-guidance option (schedule, interval, temperature, gradient point, reuse) is set."""
        return self._classifier_options() != GuidanceOptions()._classifier_options()

    def kind_for(self, has_classifier: bool) -> str:
        """The guidance kind of a run (``auto``: classifier guidance when a classifier is given, else none)."""
        if self.guidance == "auto":
            return "classifier" if has_classifier else "none"
        return self.guidance

    def identity(self) -> dict[str, Any]:
        """What a sample run's identity records of its guidance (``run.json``)."""
        return dict(guidance=self.guidance, scale=float(self.scale), guidance_options=dict(
            schedule=self.schedule, interval=self.guidance_interval, interval_in=self.interval_in,
            temperature=self.temperature, gradient_at=self.gradient_at, every=self.guidance_every,
            cfg_scale=self.cfg_scale, cfg_interval=self.cfg_interval))

    def check(self, has_classifier: bool) -> None:
        """What can be wrong before any model loads: the options against whether a classifier is given."""
        kind = self.kind_for(has_classifier)
        cfg_interval = parse_interval(self.cfg_interval, "classifier-free guidance interval")
        if kind != "classifier" and self.shapes_classifier_guidance:
            raise ValueError("--schedule, --guidance_interval, --temperature, --gradient_at and --guidance_every "
                             "shape classifier guidance: give --classifier PATH")
        if kind == "classifier":
            if not has_classifier:
                raise ValueError("classifier guidance needs --classifier PATH")
            if self.cfg_scale is None and cfg_interval is not None:
                raise ValueError("--cfg_interval needs classifier-free guidance (--cfg_scale W)")
            return
        if has_classifier:
            raise ValueError(f"a classifier was given but guidance is {kind!r}")
        if self.cfg_scale is not None:
            raise ValueError("--cfg_scale combines classifier-free with classifier guidance (give --classifier); "
                             "for classifier-free guidance alone use --guidance classifier-free --scale W")
        if kind == "none" and cfg_interval is not None:
            raise ValueError("--cfg_interval needs classifier-free guidance")

    def build(self, classifier: Optional[Callable], null_label: Optional[int]) -> Optional[Guidance]:
        """The guidance object of a run (``None``: unguided).

        Args:
            classifier: the noise-aware classifier ``classifier(x_t, t) -> logits`` (``None``: not given).
            null_label: the model's "no label" index (classifier-free guidance; ``None``: not trained for it).
        """
        self.check(classifier is not None)
        kind = self.kind_for(classifier is not None)
        cfg_interval = parse_interval(self.cfg_interval, "classifier-free guidance interval")
        if kind == "classifier":
            guiding = ClassifierGuidance(classifier, self.scale, **self._classifier_options())
            if self.cfg_scale is None:
                return guiding
            return GuidanceChain([self._classifier_free(self.cfg_scale, cfg_interval, null_label), guiding])
        if kind == "classifier-free":
            return self._classifier_free(self.scale, cfg_interval, null_label)
        return None

    def _classifier_free(self, scale: float, interval, null_label: Optional[int]) -> ClassifierFreeGuidance:
        if null_label is None:
            raise ValueError("classifier-free guidance needs a model trained with label dropout (no null label "
                             "in this checkpoint)")
        return ClassifierFreeGuidance(scale, null_label, interval=interval, interval_in=self.interval_in)

    def replace(self, **changes: Any) -> "GuidanceOptions":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


__all__ = ["GuidanceKind", "GuidanceOptions"]
