"""The guidance kinds: objects a sampler is given, never flags inside a sampler.

A guidance corrects the model's prediction in the form the sampler needs:

- ``condition_mean`` (Algorithm 1 of Dhariwal & Nichol, ancestral steps):
  mu <- mu + s * Sigma * grad_{x_t} log p_phi(y | x_t)
- ``condition_eps`` (Algorithm 2: DDIM, ODE and SDE solvers, as a score shift):
  eps <- eps - sqrt(1 - abar_t) * s * grad_{x_t} log p_phi(y | x_t), and x_0, mu from the new eps
- ``wrap_model``: guidance that changes the model call itself (classifier-free guidance).

The classifier always sees the *original* timestep, and its gradient is taken at x_t with only
its own graph: the diffusion model's prediction is made under ``no_grad``. Scale 0 is exactly
unguided (the classifier is not even called).

Where and how much to guide (beyond ADM's constant scale at every step) is a function of the step's
:class:`~.levels.NoiseLevel`, known on the host: a sampler asks ``guidance.at(level)`` for the guidance of a
step (``step_dependent`` guidance only) and ``guidance.start()`` for a run's own copy (state such as a reused
gradient). The options of :class:`ClassifierGuidance`:

- ``interval`` and ``schedule``: see :mod:`.levels` (outside the interval the classifier is not evaluated);
- ``temperature`` T: the classifier's logits divided by T, log p_T(y | x) = log softmax(l / T)_y;
- ``margin_temperature`` T_m: a separate temperature for the normaliser (Ma et al. 2023's "marginal" logit
  temperature), log p(y | x) = l_y / T - logsumexp(l / T_m) (``None``: T_m = T, the tempered softmax);
- ``gradient_at="x0"``: the gradient of log p(y | x_0_hat, t = 0) at the model's predicted x_0, used in place
  of grad_{x_t} (no Jacobian of the model);
- ``every`` k: evaluate the gradient at every k-th guided step and reuse it (times the step's scale) in
  between.

:class:`ClassifierFreeGuidance` takes an ``interval`` too (outside it, w = 1: the conditional model alone, one
batch).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Iterable, Literal, Optional, Sequence

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..noise import Generators
from ..tensor_checks import check_index_range
from .levels import (SCHEDULES, GuidanceInterval, IntervalVariable, NoiseLevel, Schedule, as_interval, check_scale,
                     schedule_factor)


class Guidance:
    """No guidance; the base of all guidance kinds (every hook is the identity)."""

    @property
    def active(self) -> bool:
        """False when the guidance cannot change anything (samplers then skip it)."""
        return False

    @property
    def step_dependent(self) -> bool:
        """True when what this guidance does depends on the step (samplers then call :meth:`at`)."""
        return False

    @property
    def uses_x0(self) -> bool:
        """True when the guidance needs the step's predicted x_0 (SDE samplers then compute it)."""
        return False

    @property
    def needs_model_gradient(self) -> bool:
        """True when the guidance differentiates the model's prediction with respect to x_t (training-free
        guidance's Delta_t = rho_t grad_{x_t} log f(x0_hat(x_t)): the model's Jacobian). The discrete samplers'
        predictor then runs the model with gradients and hands ``condition_mean`` / ``condition_eps`` an ``x``
        that requires grad and ``out["raw_pred_xstart"]``, the model's x_0 before ``denoised_fn`` and clipping,
        with its graph to ``x``; what the guidance returns is detached before the sampler sees it."""
        return False

    @property
    def shifts_x0(self) -> bool:
        """True when the guidance moves the predicted x_0 with eps held fixed (training-free guidance): exact for
        samplers whose update reads the prediction's eps and x_0 as given (DDPM, DDIM); the others refuse it."""
        return False

    #: How often the samplers make each step (N_recur, re-noising in between: training-free guidance); 1: once.
    recurrence: int = 1

    def start(self, generator: Generators = None) -> "Guidance":
        """The object to use for one sampling run (a fresh copy where the guidance keeps state).

        Args:
            generator: the run's noise (one ``torch.Generator`` or one per sample, as the sampler draws from):
                guidance that draws noise of its own (CADS, training-free recurrence) draws it from these streams,
                so a sample's guidance noise depends only on its seed, not on its batch.
        """
        return self

    def networks(self) -> list[nn.Module]:
        """The networks this guidance evaluates (they follow a sampling run to its device)."""
        return [network for _, network in self.network_roles()]

    def network_roles(self) -> list[tuple[str, nn.Module]]:
        """``(role, network)`` of each network this guidance evaluates; the role names its cost counter
        (``classifier``, ``guide_model``: ``<role>_evaluations`` per sample in a run's cost line)."""
        return []

    def at(self, level: NoiseLevel) -> "Guidance":
        """The guidance of a step at ``level`` (``step_dependent`` guidance only)."""
        return self

    def wrap_model(self, model: Callable) -> Callable:
        return model

    def condition_mean(self, diffusion: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor,
                       y: Optional[torch.Tensor]) -> dict:
        return out

    def condition_eps(self, diffusion: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor,
                      y: Optional[torch.Tensor]) -> dict:
        return out

    def score_shift(self, x: torch.Tensor, t_model: torch.Tensor, y: Optional[torch.Tensor],
                    x0: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """What this guidance adds to grad log p_t(x) (None: nothing; ``x0``: the predicted clean sample). Used by
        the SDE samplers."""
        return None


def _recompute_from_eps(diffusion: GaussianDiffusion, out: dict, x, t, eps) -> dict:
    """x_0 and the posterior mean implied by a corrected eps (not clipped, as in the reference)."""
    new = dict(out)
    new["eps"] = eps
    new["pred_xstart"] = diffusion.predict_xstart_from_eps(x, t, eps)
    new["mean"], _, _ = diffusion.q_posterior_mean_variance(new["pred_xstart"], x, t)
    return new


class ClassifierGuidance(Guidance):
    """Classifier guidance with a noise-aware classifier p_phi(y | x_t).

    Args:
        classifier: ``classifier(x_t, t) -> logits`` with original integer timesteps t.
        scale: the guidance scale s (finite, >= 0); 0 is exactly unguided.
        schedule: s(tau) = s w(tau): ``constant``, ``linear``, ``cosine`` or a function of tau (module doc).
        interval: guide only where the step's ``interval_in`` lies in [lo, hi] (inclusive); ``None``: everywhere.
        interval_in: ``t`` (the model's timestep, 0..T-1) or ``sigma`` (sigma_t / alpha_t).
        temperature: T > 0 divides the logits (calibration); 1 is the classifier as trained.
        margin_temperature: T_m > 0 divides the logits of the normaliser only: log p(y | x) = l_y / T -
            logsumexp_j(l_j / T_m) (Ma et al. 2023's joint temperature T and marginal temperature T_m;
            with T_m != T this is not a normalised distribution, only its gradient is used). ``None``: T_m = T.
        gradient_at: ``x_t`` (ADM) or ``x0``: the gradient of log p(y | x_0_hat, t=0) at the predicted x_0.
        every: evaluate the gradient at every k-th guided step and reuse it in between (1: every step).
    """

    def __init__(self, classifier: Callable, scale: float = 1.0, *, schedule: Schedule = "constant",
                 interval: Optional[GuidanceInterval | Sequence[float]] = None, interval_in: IntervalVariable = "t",
                 temperature: float = 1.0, gradient_at: Literal["x_t", "x0"] = "x_t", every: int = 1,
                 margin_temperature: Optional[float] = None):
        self.classifier = classifier
        self.scale = check_scale(scale)
        if isinstance(classifier, nn.Module):
            classifier.eval()
        if isinstance(schedule, str) and schedule not in SCHEDULES:
            raise ValueError(f"guidance schedule must be one of {', '.join(SCHEDULES)} or a function, got {schedule!r}")
        self.schedule = schedule
        self.interval = as_interval(interval, interval_in)
        if not (math.isfinite(float(temperature)) and float(temperature) > 0):
            raise ValueError(f"classifier temperature must be finite and > 0, got {temperature!r}")
        self.temperature = float(temperature)
        if margin_temperature is not None:
            try:
                valid = not isinstance(margin_temperature, bool) and math.isfinite(float(margin_temperature)) \
                    and float(margin_temperature) > 0
            except (TypeError, ValueError):
                valid = False
            if not valid:
                raise ValueError(f"classifier margin_temperature must be finite and > 0 (or None: the temperature), "
                                 f"got {margin_temperature!r}")
            margin_temperature = float(margin_temperature)
        self.margin_temperature: Optional[float] = margin_temperature
        if gradient_at not in ("x_t", "x0"):
            raise ValueError(f"gradient_at must be 'x_t' or 'x0', got {gradient_at!r}")
        self.gradient_at = gradient_at
        if int(every) != every or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = int(every)
        self._reused: Optional[torch.Tensor] = None
        self._evaluations = 0

    @property
    def active(self) -> bool:
        return self.scale != 0.0

    @property
    def step_dependent(self) -> bool:
        return self.schedule != "constant" or self.interval is not None or self.every > 1

    @property
    def uses_x0(self) -> bool:
        return self.gradient_at == "x0"

    def network_roles(self) -> list[tuple[str, nn.Module]]:
        return [("classifier", self.classifier)] if isinstance(self.classifier, nn.Module) else []

    def start(self, generator: Generators = None) -> "ClassifierGuidance":
        if self.every == 1:
            return self
        run = copy.copy(self)
        run._reused, run._evaluations = None, 0
        return run

    def scale_at(self, level: NoiseLevel) -> float:
        """The scale at a step: 0 outside the interval, s w(tau) inside."""
        if self.interval is not None and not self.interval.contains(level):
            return 0.0
        return self.scale * schedule_factor(self.schedule, level.tau)

    def at(self, level: NoiseLevel) -> Guidance:
        scale = self.scale_at(level)
        if scale == 0.0:
            return NO_GUIDANCE
        return self if scale == self.scale else _ScaledStep(self, scale)

    def _log_prob_gradient(self, x: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier guidance needs class labels y")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, t_model)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"the classifier must return logits of shape (B, classes), got {tuple(logits.shape)}")
            check_index_range(y, logits.shape[1], "label", f" for a classifier of {logits.shape[1]} classes")
            selected = self._log_prob(logits.float(), y)
            grad, = torch.autograd.grad(selected.sum(), x_in)
        return grad.float()

    def _log_prob(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) of each row: log softmax(l / T)_y, or l_y / T - logsumexp(l / T_m) with a margin temperature."""
        rows = torch.arange(len(y), device=y.device)
        margin = self.margin_temperature
        if margin is None or margin == self.temperature:
            return torch.log_softmax(logits / self.temperature, dim=-1)[rows, y]
        return logits[rows, y] / self.temperature - torch.logsumexp(logits / margin, dim=-1)

    def _gradient(self, x, t_model, y, x0) -> torch.Tensor:
        if self.gradient_at == "x0":
            if x0 is None:
                raise ValueError("gradient_at='x0' needs the predicted x_0 of the step")
            x, t_model = x0, torch.zeros_like(t_model)
        if self.every == 1:
            return self._log_prob_gradient(x, t_model, y)
        if self._reused is None or self._evaluations % self.every == 0:
            self._reused = self._log_prob_gradient(x, t_model, y)
        self._evaluations += 1
        return self._reused

    def grad_log_prob(self, x: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor,
                      x0: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
        """s * grad log p_phi(y | x_t) (at x_t, or at x0 with ``gradient_at="x0"``), in float32."""
        return self._gradient(x, t_model, y, x0) * (self.scale if scale is None else scale)

    def condition_mean(self, diffusion, out, x, t, y, scale: Optional[float] = None):
        if not self.active:
            return out
        grad = self.grad_log_prob(x, diffusion.model_timesteps(t), y, out.get("pred_xstart"), scale)
        new = dict(out)
        new["mean"] = out["mean"].float() + out["variance"] * grad
        return new

    def condition_eps(self, diffusion, out, x, t, y, scale: Optional[float] = None):
        if not self.active:
            return out
        grad = self.grad_log_prob(x, diffusion.model_timesteps(t), y, out.get("pred_xstart"), scale)
        # sqrt(1 - abar) from float32 abar, as the reference computes it: at t ~ T, x_0 = (x - sqrt(1 - abar)
        # eps) / sqrt(abar) amplifies any difference in this factor by 1 / sqrt(abar) ~ 1e4.
        eps = out["eps"] - (1 - diffusion.extract("alphas_cumprod", t, x.ndim)).sqrt() * grad
        return _recompute_from_eps(diffusion, out, x, t, eps)

    def score_shift(self, x, t_model, y, x0: Optional[torch.Tensor] = None, scale: Optional[float] = None):
        return self.grad_log_prob(x, t_model, y, x0, scale) if self.active else None


class _ScaledStep(Guidance):
    """Classifier guidance at one step, with the scale of that step (its run's state stays in ``parent``)."""

    def __init__(self, parent: ClassifierGuidance, scale: float):
        self.parent, self.scale = parent, scale

    @property
    def active(self) -> bool:
        return True

    @property
    def uses_x0(self) -> bool:
        return self.parent.uses_x0

    def condition_mean(self, diffusion, out, x, t, y):
        return self.parent.condition_mean(diffusion, out, x, t, y, scale=self.scale)

    def condition_eps(self, diffusion, out, x, t, y):
        return self.parent.condition_eps(diffusion, out, x, t, y, scale=self.scale)

    def score_shift(self, x, t_model, y, x0=None):
        return self.parent.score_shift(x, t_model, y, x0, scale=self.scale)


class ClassifierFreeGuidedModel(nn.Module):
    """eps = eps(x_t | null) + w (eps(x_t | y) - eps(x_t | null)), in one doubled batch.

    Variance channels (learned-sigma models) are taken from the conditional prediction.
    """

    def __init__(self, model: Callable, scale: float, null_label: int):
        super().__init__()
        self.model, self.scale, self.null_label = model, scale, null_label
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier-free guidance needs class labels y")
        if self.scale == 1.0:
            return self.model(x, t, y=y, **kwargs)
        null = torch.full_like(y, self.null_label)
        doubled = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]), **doubled)
        cond, uncond = out.chunk(2)
        c = x.shape[1]
        eps = uncond[:, :c] + self.scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)


class ClassifierFreeGuidance(Guidance):
    """Classifier-free guidance (Ho & Salimans) for a model trained with label dropout.

    Args:
        scale: w in eps_null + w (eps_y - eps_null); 1 is the plain conditional model, 0 the
            unconditional one, > 1 sharpens.
        null_label: the label index the model was trained with for "no label" (usually num_classes).
        interval: apply w only where the step's ``interval_in`` (``t`` or ``sigma``) lies in [lo, hi]; outside,
            w = 1 (one batch, no unconditional evaluation).
    """

    def __init__(self, scale: float, null_label: int, *,
                 interval: Optional[GuidanceInterval | Sequence[float]] = None, interval_in: IntervalVariable = "t"):
        self.scale = check_scale(scale)
        self.null_label = int(null_label)
        self.interval = as_interval(interval, interval_in)

    @property
    def active(self) -> bool:
        return True

    @property
    def step_dependent(self) -> bool:
        return self.interval is not None and self.scale != 1.0

    def at(self, level: NoiseLevel) -> Guidance:
        if self.interval is None or self.interval.contains(level):
            return self
        return ClassifierFreeGuidance(1.0, self.null_label)  # the conditional model alone

    def wrap_model(self, model):
        if getattr(model, "num_classes", None) is None:
            raise ValueError("classifier-free guidance needs a class-conditional model (num_classes is None)")
        return ClassifierFreeGuidedModel(model, self.scale, self.null_label)


class GuidanceChain(Guidance):
    """Several guidance kinds applied in order (e.g. classifier-free and classifier guidance)."""

    def __init__(self, guidances: Iterable[Guidance]):
        self.guidances = list(guidances)

    @property
    def active(self) -> bool:
        return any(g.active for g in self.guidances)

    @property
    def step_dependent(self) -> bool:
        return any(g.step_dependent for g in self.guidances)

    @property
    def uses_x0(self) -> bool:
        return any(g.uses_x0 for g in self.guidances)

    @property
    def needs_model_gradient(self) -> bool:
        return any(g.active and g.needs_model_gradient for g in self.guidances)

    @property
    def shifts_x0(self) -> bool:
        return any(g.active and g.shifts_x0 for g in self.guidances)

    @property
    def recurrence(self) -> int:
        return max([g.recurrence for g in self.guidances if g.active] + [1])

    def start(self, generator: Generators = None) -> "GuidanceChain":
        return GuidanceChain(g.start(generator) for g in self.guidances)

    def network_roles(self) -> list[tuple[str, nn.Module]]:
        return [role for g in self.guidances for role in g.network_roles()]

    def at(self, level: NoiseLevel) -> Guidance:
        return GuidanceChain(g.at(level) for g in self.guidances)

    def wrap_model(self, model):
        for g in self.guidances:
            model = g.wrap_model(model)
        return model

    def condition_mean(self, diffusion, out, x, t, y):
        for g in self.guidances:
            out = g.condition_mean(diffusion, out, x, t, y)
        return out

    def condition_eps(self, diffusion, out, x, t, y):
        for g in self.guidances:
            out = g.condition_eps(diffusion, out, x, t, y)
        return out

    def score_shift(self, x, t_model, y, x0=None):
        shifts = [s for s in (g.score_shift(x, t_model, y, x0) for g in self.guidances) if s is not None]
        return sum(shifts) if shifts else None


NO_GUIDANCE = Guidance()


def as_guidance(guidance: Optional[Guidance | Sequence[Guidance]]) -> Guidance:
    """Normalise what a sampler was given: None, one guidance, or a sequence of them."""
    if guidance is None:
        return Guidance()
    if isinstance(guidance, Guidance):
        return guidance
    if isinstance(guidance, (list, tuple)) and all(isinstance(g, Guidance) for g in guidance):
        return GuidanceChain(guidance)
    raise TypeError(f"guidance must be a Guidance object or a list of them, got {type(guidance).__name__}")
