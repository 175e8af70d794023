"""CADS: condition-annealed sampling (Sadat et al. 2024, "CADS: Unleashing the diversity of diffusion models
through condition-annealed sampling").

A class-conditional network sees its class through an embedding y (the UNet's ``label_emb(label)``, added to
the timestep embedding). CADS blurs that condition early in sampling and restores it as sampling proceeds: at a
step of normalised time tau (1 = pure noise, :class:`~.levels.NoiseLevel`) the network is run with

    y_hat   = sqrt(gamma(tau)) y + s sqrt(1 - gamma(tau)) n,        n ~ N(0, I)
    gamma(tau) = 1                             tau <= tau1
               = (tau2 - tau) / (tau2 - tau1)  tau1 < tau < tau2
               = 0                             tau >= tau2
    y_resc  = (y_hat - mean(y_hat)) / std(y_hat) * std(y) + mean(y)     (mean, std over the embedding dims of
                                                                          each sample)
    y_final = psi y_resc + (1 - psi) y_hat

in place of y. The paper's defaults for class-conditional models are tau1 = 0.6, tau2 = 0.9, s = 0.25,
psi = 1. Samples are more diverse at a given guidance scale; at gamma = 1 (tau <= tau1) the network call is
untouched.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import torch
from torch import nn

from ..noise import Generators, randn
from .kinds import NO_GUIDANCE, Guidance
from .levels import NoiseLevel

_NOT_CONDITIONAL = "CADS needs a class-conditional model (a label embedding)"


def cads_gamma(tau: float, tau1: float = 0.6, tau2: float = 0.9) -> float:
    """gamma(tau): 1 for tau <= tau1, (tau2 - tau) / (tau2 - tau1) in between, 0 for tau >= tau2."""
    if tau <= tau1:
        return 1.0
    if tau >= tau2:
        return 0.0
    return (tau2 - tau) / (tau2 - tau1)


def anneal_condition(y: torch.Tensor, noise: Optional[torch.Tensor], gamma: float, noise_scale: float,
                     psi: float = 1.0) -> torch.Tensor:
    """y_final of the module docstring for embeddings ``y`` (N, D) and standard normal ``noise`` (N, D) (unused,
    may be ``None``, when ``noise_scale`` is 0).

    The rescaling uses the ratio std(y) / std(y_hat), the same with or without Bessel's correction. With
    ``noise_scale`` 0, y_hat = sqrt(gamma) y and the rescaled embedding is y itself (its value for every
    gamma > 0 and its limit at gamma = 0, where y_hat = 0 has no spread to rescale).
    """
    y_hat = math.sqrt(gamma) * y
    if noise_scale == 0.0:
        rescaled = y
    else:
        y_hat = y_hat + (noise_scale * math.sqrt(1.0 - gamma)) * noise
        spread = y_hat.std(dim=-1, keepdim=True).clamp_min(torch.finfo(y_hat.dtype).tiny)
        rescaled = (y_hat - y_hat.mean(dim=-1, keepdim=True)) / spread * y.std(dim=-1, keepdim=True) \
            + y.mean(dim=-1, keepdim=True)
    if psi == 1.0:
        return rescaled
    return psi * rescaled + (1.0 - psi) * y_hat


def _label_embeddings(model, seen: Optional[set] = None) -> list[tuple[nn.Module, Optional[int]]]:
    """``(label_emb, num_classes of its owner)`` of every label embedding inside ``model``: the model's own
    ``label_emb``, any submodule named ``label_emb`` (wrappers such as ClassifierFreeGuidedModel, a guide
    network), and those of plain wrappers holding the network as ``network`` or ``model``."""
    seen = set() if seen is None else seen
    if id(model) in seen:
        return []
    seen.add(id(model))
    found = []
    if isinstance(model, nn.Module):
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] == "label_emb" and id(module) not in seen:
                seen.add(id(module))
                owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
                found.append((module, getattr(owner, "num_classes", None)))
    else:
        own = getattr(model, "label_emb", None)
        if isinstance(own, nn.Module) and id(own) not in seen:
            seen.add(id(own))
            found.append((own, getattr(model, "num_classes", None)))
        for attribute in ("network", "model"):
            inner = getattr(model, attribute, None)
            if inner is not None and inner is not model:
                found += _label_embeddings(inner, seen)
    return found


class ConditionAnnealing(Guidance):
    """CADS (Sadat et al. 2024): the class embedding annealed towards noise early in sampling (module docstring).

    It changes the model call (``wrap_model``): the network runs with a forward hook on its label embedding
    ``label_emb`` (found on the model, on any submodule named ``label_emb``, or on a plain wrapper's
    ``network`` / ``model``) replacing each row y by y_final. Rows whose label is the model's null label (label
    >= num_classes, classifier-free guidance's unconditional half) are left untouched. It needs a
    class-conditional network, and works with every sampler that calls the network through the step's
    ``wrap_model`` (:meth:`at`): DDPM, DDIM (and DDIM inversion), DPM-Solver, and the fixed-grid score samplers
    (pc, euler-maruyama, reverse-diffusion, annealed-langevin) through
    :class:`~guided_diffusion.sde.models.GuidedScore` on an eps network. The adaptive probability-flow ODE
    solver runs too, but each of its evaluations at a new time draws new noise, so its field is not smooth:
    prefer a fixed grid. In a guidance list, wrappers apply in order (the last is outermost): with
    :class:`~.kinds.ClassifierFreeGuidance` either order works (only the conditional rows are annealed); put it
    after :class:`~.autoguidance.Autoguidance` for the guide network's embedding to be annealed too (same
    noise). Classifier guidance is unaffected (the classifier sees no embedding).

    Noise: n is drawn once per step (per noise level: consecutive calls at one level, e.g. DDIM inversion's
    fixed-point iterations, the corrector steps of pc, or a guide network beside the main one, reuse it) with
    :func:`guided_diffusion.noise.randn` from the run's ``generator``: row i from sample i's stream, so a
    sample's CADS noise depends on its seed, not on its batch. Without per-sample generators (one generator, or
    none: DDIM inversion draws from the global RNG) the rows are those of the batch the wrapper is called with.
    Steps at gamma = 1 draw nothing and leave the call bit-identical to unguided.

    Args:
        noise_scale: s >= 0, the scale of the noise mixed into the embedding (the paper's class-conditional
            default: 0.25). With s = 0 and psi = 1 CADS changes nothing (it is then inactive).
        tau1: gamma = 1 (the condition untouched) for tau <= tau1, in [0, 1]; tau1 = 1 switches CADS off.
        tau2: gamma = 0 (y_hat pure noise) for tau >= tau2, in [tau1, 1] (tau1 < tau2 unless tau1 = 1).
        psi: in [0, 1], the weight of the mean/std-rescaled embedding against y_hat (1: fully rescaled).
    """

    def __init__(self, noise_scale: float, tau1: float = 0.6, tau2: float = 0.9, psi: float = 1.0):
        self.noise_scale = _number(noise_scale, "CADS noise_scale", 0.0, math.inf)
        self.tau1 = _number(tau1, "CADS tau1", 0.0, 1.0)
        self.tau2 = _number(tau2, "CADS tau2", 0.0, 1.0)
        if not self.tau1 < self.tau2 and self.tau1 < 1.0:
            raise ValueError(f"CADS needs tau1 < tau2 (or tau1 = 1, off), got tau1={tau1!r}, tau2={tau2!r}")
        self.psi = _number(psi, "CADS psi", 0.0, 1.0)
        self._generator: Generators = None
        self._level: Optional[NoiseLevel] = None
        self._noise: dict = {}
        self._found: dict = {}

    def __repr__(self) -> str:
        return (f"ConditionAnnealing(noise_scale={self.noise_scale}, tau1={self.tau1}, tau2={self.tau2}, "
                f"psi={self.psi})")

    @property
    def active(self) -> bool:
        """True when some step changes the model call: gamma < 1 somewhere (tau1 < 1), and not s = 0 with psi = 1."""
        return self.tau1 < 1.0 and (self.noise_scale > 0.0 or self.psi != 1.0)

    @property
    def step_dependent(self) -> bool:
        return self.active

    def gamma(self, tau: float) -> float:
        """gamma(tau) of the module docstring."""
        return cads_gamma(tau, self.tau1, self.tau2)

    def start(self, generator: Generators = None) -> "ConditionAnnealing":
        run = copy.copy(self)
        run._generator, run._level, run._noise, run._found = generator, None, {}, {}
        return run

    def label_embeddings(self, model: Callable) -> list[tuple[nn.Module, Optional[int]]]:
        """The label embeddings of ``model`` (looked up once per model and run); ValueError if it has none."""
        known = self._found.get(id(model))
        if known is None or known[0] is not model:
            known = self._found[id(model)] = (model, _label_embeddings(model))
        if not known[1]:
            raise ValueError(_NOT_CONDITIONAL)
        return known[1]

    def at(self, level: NoiseLevel) -> Guidance:
        gamma = self.gamma(level.tau)
        if not self.active or gamma >= 1.0:
            return NO_GUIDANCE
        if level != self._level:  # a new step: fresh noise, drawn when the network first asks for it
            self._level, self._noise = level, {}
        return _AnnealedStep(self, gamma, self._noise)

    def wrap_model(self, model: Callable) -> Callable:
        """The run's model: checked for a label embedding; the annealing itself is per step (:meth:`at`)."""
        self.label_embeddings(model)
        return _StepRequired(model) if self.active else model


def _number(value, name: str, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (lo <= number <= hi) or math.isnan(number):
        bounds = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return number


class _AnnealedStep(Guidance):
    """CADS at one step: gamma of the step, and the step's noise (shared by every network call of the step)."""

    def __init__(self, run: ConditionAnnealing, gamma: float, noise: dict):
        self.run, self.gamma, self.noise = run, gamma, noise

    @property
    def active(self) -> bool:
        return True

    def wrap_model(self, model: Callable) -> Callable:
        return AnnealedConditionModel(model, self, self.run.label_embeddings(model))

    def draw(self, samples: int, dim: int, device: torch.device) -> torch.Tensor:
        """n (samples, dim) of this step, float32: row i from sample i's stream, drawn once per (dim, device)."""
        key = (samples, dim, str(device))
        if key not in self.noise:
            self.noise[key] = randn((samples, dim), self.run._generator, device, torch.float32)
        return self.noise[key]


class AnnealedConditionModel(nn.Module):
    """``model(x_t, t, y)`` run with its label embeddings replaced by CADS's y_final (one step's gamma and noise).

    The samples of the run are the rows of n: one per generator with per-sample generators, else the batch the
    wrapper is called with. An embedding of N rows (a classifier-free doubled batch, N = 2B) takes noise row
    r mod B for row r; rows of the null label keep their embedding. The hooks live for one call only.
    """

    def __init__(self, model: Callable, step: _AnnealedStep, embeddings: list[tuple[nn.Module, Optional[int]]]):
        super().__init__()
        self.model, self.step, self.embeddings = model, step, embeddings
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        generator = self.step.run._generator
        per_sample = generator is not None and not isinstance(generator, torch.Generator)
        samples = len(generator) if per_sample else x.shape[0]
        handles = [module.register_forward_hook(self._hook(samples, num_classes))
                   for module, num_classes in self.embeddings]
        try:
            return self.model(x, t, **kwargs) if y is None else self.model(x, t, y=y, **kwargs)
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, samples: int, num_classes: Optional[int]):
        step = self.step
        num_classes = self.num_classes if num_classes is None else num_classes

        def hook(module, inputs, emb):
            if emb.ndim != 2 or emb.shape[0] % samples:
                raise ValueError(f"CADS: the label embedding gave shape {tuple(emb.shape)} for {samples} samples "
                                 "(expected (k * samples, dim))")
            rows, dim = emb.shape
            noise = step.draw(samples, dim, emb.device) if step.run.noise_scale > 0 else None
            if noise is not None and rows != samples:
                noise = noise.repeat(rows // samples, 1)
            annealed = anneal_condition(emb.float(), noise, step.gamma, step.run.noise_scale,
                                        step.run.psi).to(emb.dtype)
            labels = inputs[0] if inputs else None
            if num_classes is not None and isinstance(labels, torch.Tensor) and labels.shape == (rows,) \
                    and not labels.dtype.is_floating_point:
                annealed = torch.where((labels >= num_classes)[:, None], emb, annealed)
            return annealed

        return hook


class _StepRequired(nn.Module):
    """The run-level model of an active CADS: calling it means a sampler skipped ``guidance.at(level)``."""

    def __init__(self, model: Callable):
        super().__init__()
        self.model = model
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, *args, **kwargs):
        raise RuntimeError("CADS is step-dependent: the sampler must call guidance.at(level) at every step and "
                           "run the network wrapped by that step's guidance")


__all__ = ["ConditionAnnealing", "AnnealedConditionModel", "anneal_condition", "cads_gamma"]
