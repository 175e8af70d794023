"""Guidance: objects a sampler is given, never flags inside a sampler.

- :mod:`.kinds`: the guidance kinds (classifier, classifier-free, chains) and how each corrects a prediction;
- :mod:`.levels`: where and how much (the scale, the step's noise level, intervals, scale schedules);
- :mod:`.autoguidance`, :mod:`.cads`, :mod:`.clean`, :mod:`.training_free`: the kinds beyond ADM (autoguidance by a
  weaker model, condition-annealed sampling, off-the-shelf classifiers of clean images, training-free guidance);
- :mod:`.options`: the guidance option group of the commands, which builds the guidance of a run.

Plain PyTorch: nothing here imports Lightning.
"""
from .cads import ConditionAnnealing
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
from .autoguidance import Autoguidance, AutoguidedModel
from .clean import CleanClassifier, off_the_shelf_guidance, smooth_relu
from .training_free import (
    OBJECTIVES,
    PRESETS,
    ClassLogProb,
    TrainingFreeGuidance,
    make_objective,
    preset,
)
from .options import GuidanceKind, GuidanceOptions

__all__ = [
    "NO_GUIDANCE", "ClassifierFreeGuidance", "ClassifierFreeGuidedModel", "ClassifierGuidance", "Guidance",
    "GuidanceChain", "as_guidance", "SCHEDULES", "GuidanceInterval", "GuidanceScale", "IntervalVariable",
    "NoiseLevel", "Schedule", "ScheduleName", "as_interval", "check_scale", "parse_interval", "schedule_factor",
    "GuidanceKind", "GuidanceOptions", "Autoguidance", "AutoguidedModel", "ConditionAnnealing", "CleanClassifier",
    "off_the_shelf_guidance", "smooth_relu", "OBJECTIVES", "PRESETS", "ClassLogProb", "TrainingFreeGuidance",
    "make_objective", "preset",
]
