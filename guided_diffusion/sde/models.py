"""Score models on continuous time, and the adapter that makes every eps-network of the project one.

The protocol every SDE sampler relies on is small (:class:`ScoreModel`): ``score(x, t, y=None)``
approximates grad_x log p_t(x) at continuous t in [0, 1], ``sde`` gives (a_t, sigma_t), and
``model_time(t)`` is the time a noise-aware classifier must see for guidance.

:class:`EpsScoreModel` turns a network with the project's denoiser signature
``network(x_t, t_model, y=None) -> eps`` (possibly with variance channels, which are dropped)
into a score model by Tweedie's formula in its eps form:

    score(x, t) = -eps_theta(x, t_model) / sigma,        x_0 = (x - sigma eps) / a.

**Timestep mapping.** The network sees t_model = ``sde.model_time(t)``, i.e. (N - 1) t, which for
a DDPM model (:meth:`EpsScoreModel.from_diffusion`, a :class:`~.sdes.DiscreteVPSDE`) is the
original integer DDPM timestep at the grid points t_i = i / (T - 1). Between grid points:

- ``"round"`` (default for DDPM models): the nearest grid timestep i, and sigma = sqrt(1 - abar_i)
  of that timestep, so the score is *exactly* the discrete model's, -eps(x, i) / sqrt(1 - abar_i),
  at every grid point, and piecewise constant in t between them.
- ``"interpolate"``: eps linearly interpolated between the two neighbouring grid timesteps (two
  network calls), sigma = sigma_t; exact at the grid, continuous in t (use it with
  the adaptive ODE solver).
- ``"continuous"`` (default otherwise): t_model passed as a float (networks with sinusoidal
  embeddings, such as the project's UNet, accept fractional timesteps), sigma = sigma_t.

A classifier used for guidance sees ``model_time(t)``: the rounded original timestep for
``round``/``interpolate`` (classifiers take integer timesteps), (N - 1) t otherwise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Protocol, runtime_checkable

import torch

from ..sampler_protocol import model_takes_labels
from ..diffusion.prediction import eps_from_x0, score_from_eps, x0_from_eps, x0_from_score
from ..guidance import Guidance, NoiseLevel, as_guidance
from ..noise import Generators
from .sdes import SDE, DiscreteVPSDE, as_time, broadcast

TimestepMode = Literal["continuous", "round", "interpolate"]
Prediction = Literal["eps", "x0"]


@runtime_checkable
class ScoreModel(Protocol):
    """What the SDE samplers need from a model."""

    sde: SDE

    def score(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """grad_x log p_t(x) (or log p_t(x | y) for a class-conditional model), t of shape (B,)."""

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep a noise-aware classifier (and the network) sees at SDE time t."""


class RescaledTimestepNetwork:
    """``network(x, t.float() * scale, ...)`` behind the original-timestep signature ``(x, t, y=None)``.

    For networks trained with ``rescale_timesteps`` (improved-diffusion: scale = 1000 / T). A
    noise-aware classifier used for guidance still sees the original timesteps on the SDE path.
    """

    def __init__(self, network: Callable, scale: float):
        self.network, self.scale = network, float(scale)
        self.num_classes = getattr(network, "num_classes", None)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.network(x, t.float() * self.scale, **kwargs)

    def parameters(self):
        return self.network.parameters()


@dataclass
class EpsScoreModel:
    """score(x, t) = -eps(x, t_model) / sigma for a network ``network(x_t, t_model, y=None)``.

    Args:
        network: predicts eps (or x_0, see ``prediction``) in its first C output channels.
        sde: the SDE whose marginals the network was trained on.
        prediction: what the first C channels are: ``"eps"``, or ``"x0"`` (then eps = (x - a x0) / sigma).
        timesteps: how continuous t reaches the network (see the module docstring).
        clip_denoised: clip x_0 = (x - sigma eps) / a to [-1, 1] and use the eps it implies (images).
        denoised_fn: applied to x_0 before clipping.
        model_kwargs: extra network inputs (e.g. ``low_res``).
    """

    network: Callable
    sde: SDE
    prediction: Prediction = "eps"
    timesteps: TimestepMode = "continuous"
    clip_denoised: bool = False
    denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    model_kwargs: Optional[dict] = None

    def __post_init__(self):
        if self.prediction not in ("eps", "x0"):
            raise ValueError(f"unknown prediction {self.prediction!r}; expected 'eps' or 'x0'")
        if self.timesteps not in ("continuous", "round", "interpolate"):
            raise ValueError(f"unknown timesteps mode {self.timesteps!r}; expected continuous, round or interpolate")

    @classmethod
    def from_diffusion(cls, model: Callable, diffusion, *, timesteps: TimestepMode = "round",
                       **options) -> "EpsScoreModel":
        """The VP-SDE view of a DDPM model ``model(x_t, t, y=None)`` trained with ``diffusion``.

        The SDE is the :class:`DiscreteVPSDE` of the diffusion: t_i = i / (K - 1) carries abar_i and
        the network sees the original timestep ``diffusion.timestep_map[i]``. Learned-variance
        outputs (2C channels) are fine: only the first C are read.
        """
        if diffusion.mean_type == "x_prev":
            raise ValueError("a model predicting x_{t-1} (mean_type 'x_prev') has no score form; use eps or x0")
        prediction = "x0" if diffusion.mean_type == "x0" else "eps"
        if diffusion.rescale_timesteps:  # the network was trained on t * 1000 / T (improved-diffusion)
            model = RescaledTimestepNetwork(model, diffusion.timestep_scale)
        return cls(model, DiscreteVPSDE.from_diffusion(diffusion), prediction=prediction, timesteps=timesteps,
                   **options)

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(self.network, "num_classes", None)

    def with_network(self, network: Callable) -> "EpsScoreModel":
        """The same score model around another network (e.g. a classifier-free-guided wrapper)."""
        return dataclasses.replace(self, network=network)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.sde.model_time(t, "continuous" if self.timesteps == "continuous" else "round")

    def _call(self, x, t_model, y) -> torch.Tensor:
        kwargs = dict(self.model_kwargs or {})
        if y is not None and model_takes_labels(self.network):
            kwargs["y"] = y
        out = self.network(x, t_model.to(x.device), **kwargs)
        return out[:, :x.shape[1]]

    def _eps(self, out, x, a, sigma) -> torch.Tensor:
        a, sigma = broadcast(a, x), broadcast(sigma, x)
        if self.prediction == "x0":
            x0 = out
        elif self.clip_denoised or self.denoised_fn is not None:
            x0 = x0_from_eps(x, out, a, sigma)
        else:
            return out
        if self.denoised_fn is not None:
            x0 = self.denoised_fn(x0)
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
        return eps_from_x0(x, x0, a, sigma)

    def eps_and_sigma(self, x: torch.Tensor, t: torch.Tensor,
                      y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, sigma) with the sigma the score divides by (the grid's for ``round``)."""
        t = as_time(t, x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if self.timesteps == "interpolate":  # two calls of the network's batch (wrappers keep their batch size)
            lower, upper, w = self.sde.model_time_bracket(t)
            lo, hi = (self._eps(self._call(x, tm, y), x, *self.sde.model_noise_level(tm)) for tm in (lower, upper))
            return lo + broadcast(w, x) * (hi - lo), self.sde.sigma(t)
        t_model = self.model_time(t)
        a, sigma = self.sde.model_noise_level(t_model) if self.timesteps == "round" else self.sde.marginal(t)
        return self._eps(self._call(x, t_model, y), x, a, sigma), sigma

    def score(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        eps, sigma = self.eps_and_sigma(x, t, y)
        return score_from_eps(eps, broadcast(sigma, x))


class _Probe:
    """Stands in for a network to find out whether a guidance wraps the model."""

    num_classes = 1


@dataclass
class GuidedScore:
    """A score model with its guidance, seen as one function ``(x, t) -> score`` (no autograd).

    The guidance's ``wrap_model`` is applied to the network (classifier-free guidance), and its
    ``score_shift(x, t_model, y)`` (classifier guidance: s * grad log p_phi(y | x_t)) is added to
    the score, with t_model = ``score_model.model_time(t)``.
    """

    score_model: ScoreModel
    y: Optional[torch.Tensor] = None
    guidance: Optional[Guidance] = None
    generator: Generators = None
    """The sampler's noise streams, handed to ``guidance.start`` (guidance noise per sample)."""

    def __post_init__(self):
        self.guidance = as_guidance(self.guidance).start(self.generator)
        self.base = self.score_model
        if hasattr(self.score_model, "with_network"):
            self.score_model = self.score_model.with_network(self.guidance.wrap_model(self.score_model.network))
        else:
            probe = _Probe()
            if self.guidance.wrap_model(probe) is not probe:
                raise ValueError("this guidance wraps the network (e.g. classifier-free guidance), but the score "
                                 f"model {type(self.score_model).__name__} has none: use an EpsScoreModel")
        self.nfe = 0

    def level(self, t: float | torch.Tensor) -> NoiseLevel:
        """The noise level at SDE time t (a tensor t is read once: keep the time grid on the CPU)."""
        t_host = float(t) if not isinstance(t, torch.Tensor) else float(t.reshape(-1)[0])
        a, sigma = self.base.sde.marginal(t_host)
        t_model = float(self.base.model_time(torch.tensor([t_host], dtype=torch.float64))[0])
        return NoiseLevel(t=t_model, sigma=float(sigma / a), tau=t_host)

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        guidance, score_model = self.guidance, self.score_model
        if guidance.step_dependent:
            guidance = guidance.at(self.level(t))
            if hasattr(self.base, "with_network"):
                score_model = self.base.with_network(guidance.wrap_model(self.base.network))
        t = as_time(t, x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        with torch.no_grad():
            score = score_model.score(x, t, self.y)
        self.nfe += 1
        if guidance.active:
            x0 = tweedie_x0(x, score, self.base.sde, t) if guidance.uses_x0 else None
            shift = guidance.score_shift(x, score_model.model_time(t), self.y, x0)
            if shift is not None:
                score = score + shift.to(score.dtype)
        return score


def check_sde(score_model: ScoreModel, sde: Optional[SDE]) -> SDE:
    """The SDE to sample with: ``sde`` if given (it must match the model's), else the model's."""
    own = getattr(score_model, "sde", None)
    if sde is None:
        if own is None:
            raise ValueError("pass the SDE: the score model has no `sde` attribute")
        return own
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an SDE object, got {type(sde).__name__}")
    if own is not None and own is not sde and own != sde:
        raise ValueError(f"the sampler's SDE {sde!r} differs from the score model's {own!r}")
    return sde


def tweedie_x0(x: torch.Tensor, score: torch.Tensor, sde: SDE, t: float | torch.Tensor) -> torch.Tensor:
    """E[x_data | x_t = x] = (x + sigma_t^2 score) / a_t."""
    a, sigma = sde.marginal(as_time(t, x.device))
    return x0_from_score(x, score, broadcast(a, x), broadcast(sigma ** 2, x))


__all__ = ["ScoreModel", "EpsScoreModel", "GuidedScore", "TimestepMode", "Prediction", "check_sde", "tweedie_x0"]
