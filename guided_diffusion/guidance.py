"""Guidance: objects a sampler is given, never flags inside a sampler (DESIGN §3, §8).

A guidance corrects the model's prediction in the form the sampler needs:

- ``condition_mean`` (Algorithm 1 of Dhariwal & Nichol, ancestral steps):
  mu <- mu + s * Sigma * grad_{x_t} log p_phi(y | x_t)
- ``condition_eps`` (Algorithm 2: DDIM, ODE and SDE solvers, as a score shift):
  eps <- eps - sqrt(1 - abar_t) * s * grad_{x_t} log p_phi(y | x_t), and x_0, mu from the new eps
- ``wrap_model``: guidance that changes the model call itself (classifier-free guidance).

The classifier always sees the *original* timestep, and its gradient is taken at x_t with only
its own graph: the diffusion model's prediction is made under ``no_grad``. Scale 0 is exactly
unguided (the classifier is not even called).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from .diffusion import GaussianDiffusion
from .tensor_checks import check_index_range


class GuidanceScale(float):
    """A guidance scale: a finite number >= 0 (the type of ``--scale`` / ``--scales`` in the CLI).

    ``GuidanceScale("nan")`` raises ``ValueError`` with :func:`check_scale`'s message, so a bad
    value is reported by the command-line parser as exactly that.
    """

    def __new__(cls, value) -> "GuidanceScale":
        return super().__new__(cls, check_scale(value))


def check_scale(scale: float, name: str = "guidance scale") -> float:
    """A guidance scale must be a finite, non-negative number."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {scale!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and non-negative, got {scale!r}")
    return value


class Guidance:
    """No guidance; the base of all guidance kinds (every hook is the identity)."""

    @property
    def active(self) -> bool:
        """False when the guidance cannot change anything (samplers then skip it)."""
        return False

    def wrap_model(self, model: Callable) -> Callable:
        return model

    def condition_mean(self, diffusion: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor,
                       y: Optional[torch.Tensor]) -> dict:
        return out

    def condition_eps(self, diffusion: GaussianDiffusion, out: dict, x: torch.Tensor, t: torch.Tensor,
                      y: Optional[torch.Tensor]) -> dict:
        return out

    def score_shift(self, x: torch.Tensor, t_model: torch.Tensor, y: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """What this guidance adds to grad log p_t(x) (None: nothing). Used by the SDE samplers."""
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
    """

    def __init__(self, classifier: Callable, scale: float = 1.0):
        self.classifier = classifier
        self.scale = check_scale(scale)
        if isinstance(classifier, nn.Module):
            classifier.eval()

    @property
    def active(self) -> bool:
        return self.scale != 0.0

    def grad_log_prob(self, x: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """s * grad_{x_t} log p_phi(y | x_t), in float32."""
        if y is None:
            raise ValueError("classifier guidance needs class labels y")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, t_model)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"the classifier must return logits of shape (B, classes), got {tuple(logits.shape)}")
            check_index_range(y, logits.shape[1], "label", f" for a classifier of {logits.shape[1]} classes")
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            selected = log_probs[torch.arange(len(y), device=y.device), y]
            grad, = torch.autograd.grad(selected.sum(), x_in)
        return grad.float() * self.scale

    def condition_mean(self, diffusion, out, x, t, y):
        if not self.active:
            return out
        grad = self.grad_log_prob(x, diffusion.model_timesteps(t), y)
        new = dict(out)
        new["mean"] = out["mean"].float() + out["variance"] * grad
        return new

    def condition_eps(self, diffusion, out, x, t, y):
        if not self.active:
            return out
        grad = self.grad_log_prob(x, diffusion.model_timesteps(t), y)
        # sqrt(1 - abar) from float32 abar, as the reference computes it: at t ~ T, x_0 = (x - sqrt(1 - abar)
        # eps) / sqrt(abar) amplifies any difference in this factor by 1 / sqrt(abar) ~ 1e4.
        eps = out["eps"] - (1 - diffusion.extract("alphas_cumprod", t, x.ndim)).sqrt() * grad
        return _recompute_from_eps(diffusion, out, x, t, eps)

    def score_shift(self, x, t_model, y):
        return self.grad_log_prob(x, t_model, y) if self.active else None


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
    """

    def __init__(self, scale: float, null_label: int):
        self.scale = check_scale(scale)
        self.null_label = int(null_label)

    @property
    def active(self) -> bool:
        return True

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

    def score_shift(self, x, t_model, y):
        shifts = [s for s in (g.score_shift(x, t_model, y) for g in self.guidances) if s is not None]
        return sum(shifts) if shifts else None


def as_guidance(guidance: Optional[Guidance | Sequence[Guidance]]) -> Guidance:
    """Normalise what a sampler was given: None, one guidance, or a sequence of them."""
    if guidance is None:
        return Guidance()
    if isinstance(guidance, Guidance):
        return guidance
    if isinstance(guidance, (list, tuple)) and all(isinstance(g, Guidance) for g in guidance):
        return GuidanceChain(guidance)
    raise TypeError(f"guidance must be a Guidance object or a list of them, got {type(guidance).__name__}")
