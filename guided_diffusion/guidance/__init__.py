"""Guidance: objects a sampler is given, never flags inside a sampler.

- :mod:`.kinds`: the guidance kinds (classifier, classifier-free, chains) and how each corrects a prediction;
- :mod:`.levels`: where and how much (the scale, the step's noise level, intervals, scale schedules);
- :mod:`.options`: the guidance option group of the commands, which builds the guidance of a run.

Plain PyTorch: nothing here imports Lightning.
"""
from .kinds import (
    NO_GUIDANCE,
    ClassifierFreeGuidance,
    ClassifierFreeGuidedModel,
    ClassifierGuidance,
    Guidance,
    GuidanceChain,
    as_guidance,
)
from .levels import (
    SCHEDULES,
    GuidanceInterval,
    GuidanceScale,
    IntervalVariable,
    NoiseLevel,
    Schedule,
    ScheduleName,
    as_interval,
    check_scale,
    parse_interval,
    schedule_factor,
)
from .options import GuidanceKind, GuidanceOptions

__all__ = [
    "NO_GUIDANCE", "ClassifierFreeGuidance", "ClassifierFreeGuidedModel", "ClassifierGuidance", "Guidance",
    "GuidanceChain", "as_guidance", "SCHEDULES", "GuidanceInterval", "GuidanceScale", "IntervalVariable",
    "NoiseLevel", "Schedule", "ScheduleName", "as_interval", "check_scale", "parse_interval", "schedule_factor",
    "GuidanceKind", "GuidanceOptions",
]
