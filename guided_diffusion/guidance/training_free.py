"""Training-free guidance (TFG, Ye et al. 2024, "TFG: Unified Training-Free Guidance for Diffusion Models").

A diffusion model (unconditional, or conditional and guided further) is steered towards a differentiable
objective f of the clean image, with no network trained on noisy inputs: log f(x_0) is, for instance, a clean
classifier's class log-probability log p(y | x_0) (:class:`ClassLogProb`). In the paper's notation (DDIM:
abar_t, alpha_t = abar_t / abar_{t-1} of the sampler's grid), step t of TFG is, repeated N_recur times:

    x0_hat  = x0_theta(x_t)                                  the model's prediction, unclipped
    Delta_t = rho_t grad_{x_t} log f~(x0_hat(x_t))           through the model (its Jacobian)
    Delta_0 = 0;  N_iter times:  Delta_0 <- Delta_0 + mu_t grad_{x0} log f~(x0_hat + Delta_0)
    x_{t-1} = Sample(x_t, x0_hat, eps_hat) + Delta_t / sqrt(alpha_t) + sqrt(abar_{t-1}) Delta_0
    if another recurrence follows:  x_t <- sqrt(alpha_t) x_{t-1} + sqrt(1 - alpha_t) z,  z ~ N(0, I)

with the Gaussian smoothing of the objective

    log f~(x) = log (1/K) sum_k f(x + gamma_t eps_k),   eps_k ~ N(0, I),  K = ``mc_samples``   (gamma_t = 0: f)

and the strengths scheduled over the N steps of the grid, normalised so that their mean over the grid is the
given strength: rho_t = rho s_t N / sum_t' s_t' (mu_t likewise), with s_t = alpha_t (``increase``: grows as
sampling proceeds), 1 - alpha_t (``decrease``) or 1 (``constant``); gamma_t = gamma sqrt(1 - abar_t)
(``decrease``) or gamma (``constant``).

**How it enters a sampler.** With eps held fixed, adding v to DDIM's x_{t-1} = sqrt(abar_{t-1}) x0 +
sqrt(1 - abar_{t-1} - sigma_t^2) eps + sigma_t z is the same as moving x0 by v / sqrt(abar_{t-1}); as
alpha_t abar_{t-1} = abar_t, TFG's addition is the x_0 shift

    d = Delta_t / sqrt(abar_t) + Delta_0,     x_{t-1} = Sample(x_t, x0_hat + d, eps_hat)

So this guidance returns the prediction with ``pred_xstart`` moved by d, ``eps`` unchanged and ``mean`` moved
by sqrt(abar_{t-1}) d (the same addition, for the ancestral step, whose mean is DDIM's update at eta = 1 in
this (x_0, eps) form): exactly TFG for the ``ddim`` and ``ddpm`` samplers (any eta, any variance type). It is
not the x_t-fixed shift of classifier guidance: recomputing the ancestral mean from the moved x_0 with x_t
fixed, q_posterior_mean(x0_hat + d, x_t), would move x_{t-1} by only sqrt(abar_{t-1}) beta_t / (1 - abar_t) d.
The recurrence is the samplers' loop (:meth:`~guided_diffusion.sampling.common.GuidedPredictor.step`).
DPM-Solver++ reads x_0 alone and refuses this guidance (``dpm_solver.X0_SHIFT_REFUSAL``); the SDE / ODE
samplers, which take guidance only as a score shift without the model's Jacobian, refuse it at their first
step (:data:`SDE_REFUSAL`).

Delta_t differentiates the model's x_0 *before* ``denoised_fn`` and clipping (the predictor hands it with
its graph, ``needs_model_gradient``); Delta_0 starts from the step's x_0, the one its update is built on
(after clipping, when the sampler clips).

**The known methods are settings of it** (:func:`preset`, :data:`PRESETS`):

==============================  =====  =====  =====  ========  =========
method                          rho    mu     gamma  N_iter    N_recur
==============================  =====  =====  =====  ========  =========
DPS (Chung et al. 2023)         > 0    0      0      -         1
FreeDoM (Yu et al. 2023)        > 0    0      0      -         > 1
MPGD (He et al. 2024)           0      > 0    0      1         1
UGD (Bansal et al. 2023)        > 0    > 0    0      >= 1      > 1
TFG (Ye et al. 2024)            > 0    > 0    > 0    >= 1      >= 1
==============================  =====  =====  =====  ========  =========

**Cost per step** (per sample): N_recur model evaluations, each with a backward pass through the model when
rho > 0 (none when rho = 0: Delta_0 needs no Jacobian); objective (classifier) rows: N_recur K ([rho > 0] +
N_iter [mu > 0]), each with a backward pass (K = 1 when gamma = 0). Noise (smoothing draws, re-noising) comes
from the run's per-sample streams (:meth:`TrainingFreeGuidance.start`): sample i does not depend on its batch.
"""
from __future__ import annotations

import copy
import math
import numbers
from types import MappingProxyType
from typing import Callable, Literal, Mapping, Optional

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..noise import Generators, randn
from ..tensor_checks import check_index_range
from .kinds import Guidance
from .levels import check_scale

#: ``objective(x0, y) -> log f(x0)``, one value per sample (B,), differentiable in x0; y: the run's labels.
Objective = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
StrengthSchedule = Literal["increase", "decrease", "constant"]
SmoothingSchedule = Literal["decrease", "constant"]
#: The schedules of rho_t and mu_t: s_t = alpha_t, 1 - alpha_t or 1, normalised to mean 1 over the grid.
STRENGTH_SCHEDULES = ("increase", "decrease", "constant")
#: The samplers training-free guidance steps with (the others refuse it: see the module docstring).
TRAINING_FREE_SAMPLERS = ("ddim", "ddpm")
#: The schedules of gamma_t: gamma sqrt(1 - abar_t) or gamma.
SMOOTHING_SCHEDULES = ("decrease", "constant")

#: Why the SDE / ODE samplers refuse training-free guidance (at their first step: they call only ``score_shift``).
SDE_REFUSAL = ("training-free guidance cannot run on the SDE/ODE samplers: they take guidance only as a score shift "
               "at x_t, without the model's Jacobian, while TFG moves the predicted x_0 with eps held fixed and "
               "re-noises for its recurrence; use sampler ddim or ddpm")


class ClassLogProb:
    """The objective log f(x_0) = log p_T(y | x_0) = log softmax(l(x_0) / T)_y of a classifier of clean images.

    Args:
        classifier: ``classifier(x, t) -> logits`` (B, classes), called at ``timestep`` (a noise-aware classifier
            at its clean end), or ``classifier(x) -> logits`` with ``timestep=None`` (a clean classifier).
        temperature: T > 0 divides the logits (T > 1 flattens p(y | x_0), and with it the gradient's
            saturation on confidently classified samples).
        timestep: the integer timestep the classifier sees (0: clean), or ``None``: it takes no timestep.
    """

    def __init__(self, classifier: Callable, temperature: float = 1.0, *, timestep: Optional[int] = 0):
        if not callable(classifier):
            raise ValueError(f"class-log-prob objective: the classifier must be callable, got "
                             f"{type(classifier).__name__}")
        if isinstance(temperature, bool) or not _finite_positive(temperature):
            raise ValueError(f"class-log-prob objective: temperature must be finite and > 0, got {temperature!r}")
        if timestep is not None and (isinstance(timestep, bool) or not isinstance(timestep, numbers.Integral)
                                     or timestep < 0):
            raise ValueError(f"class-log-prob objective: timestep must be an integer >= 0 or None, got {timestep!r}")
        self.classifier, self.temperature, self.timestep = classifier, float(temperature), timestep
        if isinstance(classifier, nn.Module):
            classifier.eval()

    def network_roles(self) -> list[tuple[str, nn.Module]]:
        return [("classifier", self.classifier)] if isinstance(self.classifier, nn.Module) else []

    def __call__(self, x0: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        if y is None:
            raise ValueError("the class-log-prob objective needs class labels y")
        if self.timestep is None:
            logits = self.classifier(x0)
        else:
            logits = self.classifier(x0, torch.full((x0.shape[0],), self.timestep, dtype=torch.long, device=x0.device))
        if logits.ndim != 2 or logits.shape[0] != x0.shape[0]:
            raise ValueError(f"the classifier must return logits of shape (B, classes), got {tuple(logits.shape)}")
        check_index_range(y, logits.shape[1], "label", f" for a classifier of {logits.shape[1]} classes")
        log_probs = torch.log_softmax(logits.float() / self.temperature, dim=-1)
        return log_probs[torch.arange(len(y), device=log_probs.device), y]


#: The named objectives: name -> constructor ``(*args, **kwargs) -> objective`` (:func:`make_objective`).
OBJECTIVES: Mapping[str, Callable[..., Objective]] = MappingProxyType({"class-log-prob": ClassLogProb})


def make_objective(name: str, *args, **kwargs) -> Objective:
    """The objective called ``name`` in :data:`OBJECTIVES`, built with the given arguments."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown training-free objective {name!r}; expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](*args, **kwargs)


class TrainingFreeGuidance(Guidance):
    """Training-free guidance (module docstring): DPS, FreeDoM, MPGD, UGD and TFG by its settings.

    Args:
        objective: ``objective(x0, y) -> log f(x0)`` per sample (B,), differentiable (:data:`OBJECTIVES`); if it
            has ``network_roles()`` its networks are counted (``classifier_evaluations`` for :class:`ClassLogProb`).
        rho: rho, the strength of Delta_t (the gradient through the model's Jacobian), finite >= 0.
        mu: mu, the strength of Delta_0 (gradient ascent on x_0, no Jacobian), finite >= 0.
        gamma: gamma, the smoothing scale of f~; 0: f itself (``mc_samples`` unused, no noise drawn).
        mc_samples: K >= 1, the draws of the Monte-Carlo estimate of f~ (per gradient evaluation).
        iterations: N_iter >= 0, the gradient steps of Delta_0; at least 1 when mu > 0.
        recurrence: N_recur >= 1, how often each step is made (re-noised by q(x_t | x_{t-1}) in between).
        rho_schedule: s_t of rho_t: ``increase`` (alpha_t), ``decrease`` (1 - alpha_t) or ``constant``.
        mu_schedule: s_t of mu_t, as ``rho_schedule``.
        gamma_schedule: ``decrease`` (gamma_t = gamma sqrt(1 - abar_t)) or ``constant`` (gamma_t = gamma).

    With rho = mu = 0 it is inactive: the samplers run exactly unguided (no recurrence, no objective call).
    """

    def __init__(self, objective: Objective, *, rho: float = 0.0, mu: float = 0.0, gamma: float = 0.0,
                 mc_samples: int = 1, iterations: int = 1, recurrence: int = 1,
                 rho_schedule: StrengthSchedule = "increase", mu_schedule: StrengthSchedule = "increase",
                 gamma_schedule: SmoothingSchedule = "decrease"):
        if not callable(objective):
            raise ValueError(f"training-free guidance: the objective must be callable, got {type(objective).__name__}")
        self.objective = objective
        self.rho = check_scale(rho, "training-free guidance rho")
        self.mu = check_scale(mu, "training-free guidance mu")
        self.gamma = check_scale(gamma, "training-free guidance gamma")
        self.mc_samples = _check_count("mc_samples", mc_samples, 1)
        self.iterations = _check_count("iterations", iterations, 0)
        self.recurrence = _check_count("recurrence", recurrence, 1)
        if self.mu > 0 and self.iterations == 0:
            raise ValueError("training-free guidance: mu > 0 needs iterations >= 1 (the gradient steps of Delta_0)")
        for name, value, choices in (("rho_schedule", rho_schedule, STRENGTH_SCHEDULES),
                                     ("mu_schedule", mu_schedule, STRENGTH_SCHEDULES),
                                     ("gamma_schedule", gamma_schedule, SMOOTHING_SCHEDULES)):
            if value not in choices:
                raise ValueError(f"training-free guidance: {name} must be one of {', '.join(choices)}, got {value!r}")
        self.rho_schedule, self.mu_schedule, self.gamma_schedule = rho_schedule, mu_schedule, gamma_schedule
        self.generator: Generators = None
        self._tables: Optional[tuple] = None

    def __repr__(self) -> str:
        return (f"TrainingFreeGuidance(rho={self.rho:g}, mu={self.mu:g}, gamma={self.gamma:g}, "
                f"mc_samples={self.mc_samples}, iterations={self.iterations}, recurrence={self.recurrence}, "
                f"rho_schedule={self.rho_schedule!r}, mu_schedule={self.mu_schedule!r}, "
                f"gamma_schedule={self.gamma_schedule!r})")

    # ------------------------------------------------------------------ the Guidance contract
    @property
    def active(self) -> bool:
        return self.rho > 0 or self.mu > 0

    @property
    def needs_model_gradient(self) -> bool:
        return self.rho > 0

    @property
    def shifts_x0(self) -> bool:
        """This guidance moves the predicted x_0 with eps held fixed (samplers that cannot take that refuse it)."""
        return True

    def network_roles(self) -> list[tuple[str, nn.Module]]:
        roles = getattr(self.objective, "network_roles", None)
        return list(roles()) if callable(roles) else []

    def start(self, generator: Generators = None) -> "TrainingFreeGuidance":
        """This guidance for one run, drawing its smoothing noise from ``generator`` (the sampler's streams)."""
        run = copy.copy(self)
        run.generator, run._tables = generator, None
        return run

    def condition_mean(self, diffusion: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor,
                       y: Optional[torch.Tensor]) -> dict:
        return self._shifted(diffusion, out, x, t, y)

    def condition_eps(self, diffusion: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor,
                      y: Optional[torch.Tensor]) -> dict:
        return self._shifted(diffusion, out, x, t, y)

    def score_shift(self, x, t_model, y, x0=None):
        if not self.active:
            return None
        raise ValueError(SDE_REFUSAL)

    # ------------------------------------------------------------------ TFG
    def strengths(self, diffusion: GaussianDiffusion, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, ...]:
        """(rho_t, mu_t, gamma_t) at steps t of ``diffusion`` (the sampler's respaced process), float32, shaped
        (B, 1, ..., 1) to broadcast over ``ndim`` dimensions (module docstring: their schedules)."""
        if self._tables is None or self._tables[0] is not diffusion or self._tables[1] != t.device:
            abar = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64)
            alpha = abar / torch.as_tensor(diffusion.alphas_cumprod_prev, dtype=torch.float64)
            shapes = {"increase": alpha, "decrease": 1 - alpha, "constant": torch.ones_like(alpha)}

            def normalised(strength: float, schedule: str) -> torch.Tensor:
                s = shapes[schedule]
                return strength * s * len(s) / s.sum()

            gamma = self.gamma * ((1 - abar).sqrt() if self.gamma_schedule == "decrease" else torch.ones_like(abar))
            tables = torch.stack([normalised(self.rho, self.rho_schedule), normalised(self.mu, self.mu_schedule),
                                  gamma]).float().to(t.device)
            self._tables = (diffusion, t.device, tables)
        values = self._tables[2][:, t]
        return tuple(v.reshape(v.shape + (1,) * (ndim - 1)) for v in values)

    def smoothed_log_objective(self, x0: torch.Tensor, y: Optional[torch.Tensor],
                               gamma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """log f~(x0) = log (1/K) sum_k f(x0 + gamma eps_k), per sample (B,); gamma a number or per sample
        (B, 1, ..., 1). Without smoothing (gamma = 0, the number) it is log f(x0) itself and draws nothing;
        otherwise the K draws of sample i come from its noise stream (one draw of shape (B, K, ...))."""
        if isinstance(gamma, (int, float)) and gamma == 0:
            return self._log_objective(x0, y)
        k = self.mc_samples
        noise = randn((x0.shape[0], k) + tuple(x0.shape[1:]), self.generator, x0.device, x0.dtype)
        gamma = torch.as_tensor(gamma, dtype=x0.dtype, device=x0.device)
        if gamma.ndim:
            gamma = gamma.reshape(gamma.shape[0], 1, *([1] * (x0.ndim - 1)))
        points = (x0.unsqueeze(1) + gamma * noise).reshape((-1,) + tuple(x0.shape[1:]))
        labels = None if y is None else y.repeat_interleave(k)
        log_f = self._log_objective(points, labels).reshape(x0.shape[0], k)
        return torch.logsumexp(log_f, dim=1) - math.log(k)

    def _log_objective(self, x0: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        log_f = self.objective(x0, y)
        if not isinstance(log_f, torch.Tensor) or log_f.shape != (x0.shape[0],):
            shape = tuple(log_f.shape) if isinstance(log_f, torch.Tensor) else type(log_f).__name__
            raise ValueError(f"the training-free objective must return log f per sample, shape ({x0.shape[0]},), "
                             f"got {shape}")
        return log_f

    def deltas(self, diffusion: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor,
               y: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Delta_t, Delta_0) of the step (module docstring), detached. Delta_t (rho > 0) needs ``x`` requiring grad
        and ``out["raw_pred_xstart"]`` with its graph to it (the predictor's ``needs_model_gradient`` path)."""
        rho_t, mu_t, gamma_t = self.strengths(diffusion, t, x.ndim)
        gamma = gamma_t.reshape(-1) if self.gamma > 0 else 0.0
        x0 = out["pred_xstart"].detach()
        delta_t = torch.zeros_like(x0)
        if self.rho > 0:
            raw = out.get("raw_pred_xstart")
            if raw is None or not raw.requires_grad or not x.requires_grad:
                raise ValueError("training-free guidance with rho > 0 needs the model's Jacobian: a prediction made "
                                 "with gradients (GuidedPredictor honours needs_model_gradient; samplers ddim, ddpm)")
            with torch.enable_grad():
                # the graph is kept for another guidance of a chain; it goes when the step's prediction does
                grad, = torch.autograd.grad(self.smoothed_log_objective(raw, y, gamma).sum(), x, retain_graph=True)
            delta_t = rho_t * grad.detach().to(x0.dtype)
        delta_0 = torch.zeros_like(x0)
        if self.mu > 0:
            for _ in range(self.iterations):
                with torch.enable_grad():
                    point = (x0 + delta_0).requires_grad_(True)
                    grad, = torch.autograd.grad(self.smoothed_log_objective(point, y, gamma).sum(), point)
                delta_0 = delta_0 + mu_t * grad.detach().to(x0.dtype)
        return delta_t, delta_0

    def x0_shift(self, diffusion: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor,
                 y: Optional[torch.Tensor]) -> torch.Tensor:
        """d = Delta_t / sqrt(abar_t) + Delta_0: TFG's addition to x_{t-1} as a shift of x_0 with eps fixed."""
        delta_t, delta_0 = self.deltas(diffusion, out, x, t, y)
        return delta_t / diffusion.extract("sqrt_alphas_cumprod", t, x.ndim) + delta_0

    def _shifted(self, diffusion, out, x, t, y) -> dict:
        if not self.active:
            return out
        d = self.x0_shift(diffusion, out, x, t, y)
        new = dict(out)
        new["pred_xstart"] = out["pred_xstart"] + d
        new["mean"] = out["mean"] + diffusion.extract("alphas_cumprod_prev", t, x.ndim).sqrt() * d
        return new


#: The settings of the known methods (module docstring's table). The strengths are starting points to tune
#: (the paper searches rho, mu, gamma per task and objective); the presets fix which are non-zero, N_iter, N_recur.
PRESETS: Mapping[str, Mapping[str, object]] = MappingProxyType({
    "dps": MappingProxyType(dict(rho=1.0, mu=0.0, gamma=0.0, iterations=0, recurrence=1)),
    "freedom": MappingProxyType(dict(rho=1.0, mu=0.0, gamma=0.0, iterations=0, recurrence=2)),
    "mpgd": MappingProxyType(dict(rho=0.0, mu=1.0, gamma=0.0, iterations=1, recurrence=1)),
    "ugd": MappingProxyType(dict(rho=1.0, mu=1.0, gamma=0.0, iterations=3, recurrence=2)),
    "tfg": MappingProxyType(dict(rho=1.0, mu=1.0, gamma=0.1, mc_samples=1, iterations=1, recurrence=1)),
})
PresetName = Literal["dps", "freedom", "mpgd", "ugd", "tfg"]


def preset(name: PresetName, objective: Objective, **overrides) -> TrainingFreeGuidance:
    """The training-free guidance of method ``name`` (:data:`PRESETS`: ``dps``, ``freedom``, ``mpgd``, ``ugd``,
    ``tfg``) for ``objective``; ``overrides`` set any argument of :class:`TrainingFreeGuidance` (the strengths)."""
    if name not in PRESETS:
        raise ValueError(f"unknown training-free guidance preset {name!r}; expected one of {', '.join(PRESETS)}")
    return TrainingFreeGuidance(objective, **{**PRESETS[name], **overrides})


def _finite_positive(value) -> bool:
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"training-free guidance: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


__all__ = ["Objective", "StrengthSchedule", "SmoothingSchedule", "STRENGTH_SCHEDULES", "SMOOTHING_SCHEDULES",
           "SDE_REFUSAL", "TRAINING_FREE_SAMPLERS", "ClassLogProb", "OBJECTIVES", "make_objective",
           "TrainingFreeGuidance", "PRESETS", "PresetName", "preset"]
