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
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from ..option_groups import check_choices
from .autoguidance import Autoguidance
from .cads import ConditionAnnealing
from .clean import CleanClassifier
from .kinds import ClassifierFreeGuidance, ClassifierGuidance, Guidance, GuidanceChain
from .training_free import ClassLogProb, TrainingFreeGuidance
from .levels import GuidanceScale, IntervalVariable, ScheduleName, check_scale, parse_interval

GuidanceKind = Literal["auto", "none", "classifier", "classifier-free", "training-free"]
TrainingFreeSchedule = Literal["increase", "decrease", "constant"]
_TRAINING_FREE = ("tfg_rho", "tfg_mu", "tfg_gamma", "tfg_mc_samples", "tfg_iterations", "tfg_recurrence",
                  "tfg_schedule")
#: Options added after run identities were first written (recorded in ``run.json`` only when set).
_LATER_OPTIONS = ("guide_scale", "guide_interval", "cads_noise", "cads_tau", "cads_psi", "margin_temperature",
                  "softplus_beta") + _TRAINING_FREE


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
        guide_scale: autoguidance w in D_0 + w (D_1 - D_0), D_0 the weaker guide model of ``--guide_model``
            (Karras et al. 2024; 1 = the model alone, typical 2-3). Composes with every other kind.
        guide_interval: autoguidance only in ``"lo,hi"`` (in ``interval_in``; w = 1 outside, the guide not run).
        cads_noise: CADS (Sadat et al. 2024) noise scale s on the class embedding, y_hat = sqrt(gamma) y +
            s sqrt(1 - gamma) n (class-conditional models; ``None``: off). The paper uses 0.1-0.5.
        cads_tau: ``"tau1,tau2"``: gamma(tau) = 1 below tau1, 0 above tau2, linear between (tau = 1 is noise).
        cads_psi: CADS rescaling psi: the noisy embedding rescaled to the clean one's mean and std (1), kept as it
            is (0), or a mix.
        margin_temperature: the temperature of the classifier's normaliser, log p = l_y / T - logsumexp(l / T_m)
            (Ma et al. 2023's calibration of off-the-shelf classifiers; default: ``temperature``).
        softplus_beta: smooth a clean (off-the-shelf) classifier's ReLUs into Softplus(beta) for its gradients.
        tfg_rho: training-free guidance: rho, the step on x_t through the model's Jacobian (DPS, FreeDoM, UGD).
        tfg_mu: training-free guidance: mu, the step on the predicted x_0 (MPGD, UGD).
        tfg_gamma: training-free guidance: gamma, the std of the Gaussian smoothing of the objective (times
            sqrt(1 - abar_t)); 0: the objective itself.
        tfg_mc_samples: draws of the smoothing noise per evaluation of the smoothed objective.
        tfg_iterations: gradient steps on x_0 per sampling step (universal guidance's backward steps).
        tfg_recurrence: times each sampling step is repeated, re-noising in between (FreeDoM, universal guidance).
        tfg_schedule: rho_t and mu_t over the steps: ``increase`` (prop. to alpha_t), ``decrease`` (1 - alpha_t)
            or ``constant``, each normalised to mean 1.
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
    guide_scale: Optional[GuidanceScale] = None
    guide_interval: Optional[str] = None
    cads_noise: Optional[float] = None
    cads_tau: str = "0.6,0.9"
    cads_psi: float = 1.0
    margin_temperature: Optional[float] = None
    softplus_beta: Optional[float] = None
    tfg_rho: float = 0.0
    tfg_mu: float = 0.0
    tfg_gamma: float = 0.0
    tfg_mc_samples: int = 1
    tfg_iterations: int = 1
    tfg_recurrence: int = 1
    tfg_schedule: TrainingFreeSchedule = "increase"

    def __post_init__(self):
        check_choices(self)
        object.__setattr__(self, "scale", check_scale(self.scale))
        ClassifierGuidance(_never_called, 1.0, **self._classifier_options())  # its own checks, made once
        parse_interval(self.cfg_interval, "classifier-free guidance interval")
        if self.cfg_scale is not None:
            object.__setattr__(self, "cfg_scale", check_scale(self.cfg_scale, "classifier-free guidance scale"))
        if self.guide_scale is not None:
            object.__setattr__(self, "guide_scale", check_scale(self.guide_scale, "--guide_scale"))
        parse_interval(self.guide_interval, "autoguidance interval (--guide_interval)")
        self._cads()
        for name in ("margin_temperature", "softplus_beta"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"--{name} must be finite and > 0, got {value!r}")
        self._training_free(_never_called)

    def _classifier_options(self) -> dict[str, Any]:
        return dict(schedule=self.schedule, interval=parse_interval(self.guidance_interval),
                    interval_in=self.interval_in, temperature=self.temperature, gradient_at=self.gradient_at,
                    every=self.guidance_every)

    def _cads(self) -> Optional[ConditionAnnealing]:
        """The CADS guidance of these options (``None``: off); checks them."""
        tau = parse_interval(self.cads_tau, "--cads_tau")
        if tau is None or not tau[1] <= 1:
            raise ValueError(f"--cads_tau must be 'tau1,tau2' with 0 <= tau1 <= tau2 <= 1, got {self.cads_tau!r}")
        if self.cads_noise is None:
            if (self.cads_tau, self.cads_psi) != ("0.6,0.9", 1.0):
                raise ValueError("--cads_tau and --cads_psi shape CADS: give --cads_noise S")
            return None
        return ConditionAnnealing(self.cads_noise, tau1=tau[0], tau2=tau[1], psi=self.cads_psi)

    def _training_free_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _TRAINING_FREE}

    def _training_free(self, classifier: Callable, clean: bool = False) -> TrainingFreeGuidance:
        """The training-free guidance of these options with ``classifier``'s class log-probability as objective."""
        if clean:
            classifier = CleanClassifier(classifier, softplus_beta=self.softplus_beta)
        objective = ClassLogProb(classifier, temperature=self.temperature)
        return TrainingFreeGuidance(objective, rho=self.tfg_rho, mu=self.tfg_mu, gamma=self.tfg_gamma,
                                    mc_samples=self.tfg_mc_samples, iterations=self.tfg_iterations,
                                    recurrence=self.tfg_recurrence, rho_schedule=self.tfg_schedule,
                                    mu_schedule=self.tfg_schedule)

    @property
    def shapes_classifier_guidance(self) -> bool:
        """Whether a classifier-guidance option (schedule, interval, temperature, gradient point, reuse) is set."""
        return self._classifier_options() != GuidanceOptions()._classifier_options()

    @property
    def uses_classifier_free(self) -> bool:
        """Whether classifier-free guidance is part of the run (alone, or beside a classifier's)."""
        return self.guidance == "classifier-free" or self.cfg_scale is not None

    def kind_for(self, has_classifier: bool) -> str:
        """The guidance kind of a run (``auto``: classifier guidance when a classifier is given, else none)."""
        if self.guidance == "auto":
            return "classifier" if has_classifier else "none"
        return self.guidance

    def identity(self) -> dict[str, Any]:
        """What a sample run's identity records of its guidance (``run.json``; an option added after a run was made
        is recorded only when it is set, so earlier runs keep their identity)."""
        options = dict(schedule=self.schedule, interval=self.guidance_interval, interval_in=self.interval_in,
                       temperature=self.temperature, gradient_at=self.gradient_at, every=self.guidance_every,
                       cfg_scale=self.cfg_scale, cfg_interval=self.cfg_interval)
        defaults = GuidanceOptions()
        options.update({name: getattr(self, name) for name in _LATER_OPTIONS
                        if getattr(self, name) != getattr(defaults, name)})
        return dict(guidance=self.guidance, scale=float(self.scale), guidance_options=options)

    def check(self, has_classifier: bool, has_guide: bool = False) -> None:
        """What can be wrong before any model loads: the options against whether a classifier and an autoguidance
        guide model are given."""
        kind = self.kind_for(has_classifier)
        cfg_interval = parse_interval(self.cfg_interval, "classifier-free guidance interval")
        if has_guide and self.guide_scale is None:
            raise ValueError("--guide_model needs its scale: --guide_scale W (1 = the model alone; try 2)")
        if not has_guide and (self.guide_scale is not None or self.guide_interval is not None):
            raise ValueError("--guide_scale and --guide_interval shape autoguidance: give --guide_model FILE")
        tuned = [name for name in _TRAINING_FREE if getattr(self, name) != getattr(GuidanceOptions(), name)]
        if kind == "training-free":
            if not has_classifier:
                raise ValueError("training-free guidance needs --classifier PATH (its objective is the class "
                                 "log-probability of the predicted x_0)")
            if self.tfg_rho == 0 and self.tfg_mu == 0:
                raise ValueError("training-free guidance needs --tfg_rho (through the model: DPS, FreeDoM) or "
                                 "--tfg_mu (on x_0: MPGD), or both (universal guidance)")
            if self.scale != 1.0 or self.shapes_classifier_guidance and self._classifier_options() != dict(
                    GuidanceOptions()._classifier_options(), temperature=self.temperature):
                raise ValueError("training-free guidance is set by the --tfg_* options (and --temperature): --scale, "
                                 "--schedule, --guidance_interval, --gradient_at and --guidance_every are classifier "
                                 "guidance's")
            return self._check_cfg_with_classifier(cfg_interval)
        if tuned:
            raise ValueError(f"--{tuned[0]} shapes training-free guidance: give --guidance training-free")
        if kind != "classifier" and (self.shapes_classifier_guidance or self.margin_temperature is not None
                                     or self.softplus_beta is not None):
            raise ValueError("--schedule, --guidance_interval, --temperature, --margin_temperature, --softplus_beta, "
                             "--gradient_at and --guidance_every shape classifier guidance: give --classifier PATH")
        if kind == "classifier":
            if not has_classifier:
                raise ValueError("classifier guidance needs --classifier PATH")
            return self._check_cfg_with_classifier(cfg_interval)
        if has_classifier:
            raise ValueError(f"a classifier was given but guidance is {kind!r}")
        if self.cfg_scale is not None:
            raise ValueError("--cfg_scale combines classifier-free with classifier guidance (give --classifier); "
                             "for classifier-free guidance alone use --guidance classifier-free --scale W")
        if kind == "none" and cfg_interval is not None:
            raise ValueError("--cfg_interval needs classifier-free guidance")

    def _check_cfg_with_classifier(self, cfg_interval) -> None:
        if self.cfg_scale is None and cfg_interval is not None:
            raise ValueError("--cfg_interval needs classifier-free guidance (--cfg_scale W)")

    def build(self, classifier: Optional[Callable], null_label: Optional[int], *, guide: Optional[Callable] = None,
              clean: bool = False) -> Optional[Guidance]:
        """The guidance object of a run (``None``: unguided).

        Args:
            classifier: the classifier ``classifier(x, t) -> logits`` (``None``: not given).
            null_label: the model's "no label" index (classifier-free guidance; ``None``: not trained for it).
            guide: the autoguidance guide model D_0 (``None``: no autoguidance).
            clean: the classifier reads clean images (an off-the-shelf classifier: it guides at the predicted x_0).

        The kinds are chained innermost first: autoguidance, CADS (both change the model call), classifier-free
        guidance, then classifier or training-free guidance on the resulting prediction.
        """
        self.check(classifier is not None, guide is not None)
        kind = self.kind_for(classifier is not None)
        cfg_interval = parse_interval(self.cfg_interval, "classifier-free guidance interval")
        parts: list[Guidance] = []
        if guide is not None:
            parts.append(Autoguidance(guide, self.guide_scale, interval=parse_interval(self.guide_interval),
                                      interval_in=self.interval_in))
        cads = self._cads()
        if cads is not None:
            parts.append(cads)
        if kind == "classifier-free":
            parts.append(self._classifier_free(self.scale, cfg_interval, null_label))
        elif kind in ("classifier", "training-free"):
            if self.cfg_scale is not None:
                parts.append(self._classifier_free(self.cfg_scale, cfg_interval, null_label))
            if kind == "classifier":
                parts.append(self._classifier_guidance(classifier, clean))
            else:
                parts.append(self._training_free(classifier, clean))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else GuidanceChain(parts)

    def _classifier_guidance(self, classifier: Callable, clean: bool) -> ClassifierGuidance:
        options = self._classifier_options()
        if clean:
            if self.gradient_at == "x_t":  # a clean classifier reads x_0: it guides through the predicted x_0
                options["gradient_at"] = "x0"
            classifier = CleanClassifier(classifier, softplus_beta=self.softplus_beta)
        elif self.softplus_beta is not None:
            raise ValueError("--softplus_beta smooths an off-the-shelf (clean-image) classifier; this one is "
                             "noise-aware")
        return ClassifierGuidance(classifier, self.scale, margin_temperature=self.margin_temperature, **options)

    def _classifier_free(self, scale: float, interval, null_label: Optional[int]) -> ClassifierFreeGuidance:
        if null_label is None:
            raise ValueError("classifier-free guidance needs a model trained with label dropout (no null label "
                             "in this checkpoint)")
        return ClassifierFreeGuidance(scale, null_label, interval=interval, interval_in=self.interval_in)

    def replace(self, **changes: Any) -> "GuidanceOptions":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


__all__ = ["GuidanceKind", "GuidanceOptions"]
