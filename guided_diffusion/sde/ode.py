"""The probability-flow ODE (Song et al. 2021, eq. 13): sampling, encoding and exact likelihood.

    dx/dt = v(x, t) = f(t) x - g(t)^2 / 2 * (grad log p_t(x) + s grad log p_t(y | x))

has the SDE's marginals p_t at every t. It is solved with an adaptive Runge–Kutta method of
:mod:`scipy.integrate` (RK45 by default) on the flattened batch in float64; the network is called
in the dtype of the input. NFE (network evaluations) is reported. The step size is shared by the
batch, so a sample depends (within ``rtol``/``atol``) on its batch.

**Likelihood.** Along a solution, d log p_t(x(t)) / dt = -div v, so

    log p_eps(x) = log p_1(x(1)) + int_eps^1 div v(x(t), t) dt,

with div v estimated by Hutchinson–Skilling, div v ~ e^T (dv/dx) e, one vector-Jacobian product
per probe e (Rademacher or Gaussian), the probes drawn once and fixed for the whole integration
(``probe="exact"`` computes the full trace with D products, for small D). The estimator is
unbiased: E_e[e^T A e] = tr A for A = int dv/dx dt.

**Bits per dimension.** For data on the 256-level grid x = -1 + 2k / 255 in [-1, 1] (the layout
of :meth:`~guided_diffusion.diffusion.GaussianDiffusion.calc_bpd_loop`, whose decoder bins are
[x - 1/255, x + 1/255]), uniform dequantisation x~ = x + u, u ~ U(-1/255, 1/255)^D, gives a
discrete model P(k) = int_bin p and, by Jensen, the bound

    -log2 P(k) <= E_u[-log2 p(x~)] - D log2(2/255),   i.e.
    bpd = -(log p(x~) - D log 127.5) / (D ln 2) = -log p(x~) / (D ln 2) + log2(127.5),

an upper bound on the same discrete NLL as the variational bound, so the two numbers compare
directly. (score_sde's "+7" is log2(128): its bins are 2/256 wide on [-1, 1]; "+8" is the offset
for data scaled to [0, 1].) With ``num_bins=None`` the data are continuous and bpd is just
-log p(x) / (D ln 2).
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
import torch
from scipy import integrate
from tqdm.auto import tqdm

from ..noise import Generators, randn
from ..sampler_protocol import ShapeOrNoise, StepCallback
from .models import GuidedScore, ScoreModel, check_sde, tweedie_x0
from .samplers import start
from .sdes import SDE, as_time, broadcast

Method = Literal["RK45", "RK23", "DOP853"]
Probe = Literal["rademacher", "gaussian", "exact"]
_SOLVERS = {"RK45": integrate.RK45, "RK23": integrate.RK23, "DOP853": integrate.DOP853}


def _check_tolerances(rtol: float, atol: float, method: str) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if method not in _SOLVERS:
        raise ValueError(f"unknown ODE method {method!r}; expected one of {', '.join(_SOLVERS)}")


def flow_drift(sde: SDE, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """v(x, t) = f(t) x - g(t)^2 / 2 * score."""
    return sde.drift(x, t) - 0.5 * broadcast(sde.diffusion(t), x) ** 2 * score


class _Flat:
    """Conversions between a batch tensor and scipy's flat float64 state."""

    def __init__(self, like: torch.Tensor):
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device

    def tensor(self, y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y)).reshape(self.shape).to(self.device, self.dtype)

    @staticmethod
    def numpy(x: torch.Tensor) -> np.ndarray:
        return x.detach().to("cpu", torch.float64).numpy().reshape(-1)


def ode_sample(score_model: ScoreModel, sde: Optional[SDE], shape_or_noise: ShapeOrNoise, *,
               y: Optional[torch.Tensor] = None, guidance=None, rtol: float = 1e-5, atol: float = 1e-5,
               method: Method = "RK45", eps: Optional[float] = None, denoise: bool = True,
               generator: Generators = None, progress: bool = True, callback: StepCallback = None,
               device=None) -> torch.Tensor:
    """Sample by solving the probability-flow ODE from t = 1 to ``eps`` with an adaptive solver.

    Arguments as :func:`~.samplers.pc_sample`, plus ``rtol``/``atol`` and ``method`` of the scipy
    solver; ``generator`` only draws x_1 (the ODE is deterministic). ``callback`` is called after
    every accepted solver step with ``{"i", "t", "sample", "pred_xstart", "nfe"}`` (``nfe``: network
    evaluations so far), then once more with the (denoised) final state at ``eps``.
    ``pred_xstart`` comes free from the solver's last stage (first-same-as-last), not extra calls.
    Returns the state at ``eps``, denoised (Tweedie) if ``denoise``.
    """
    _check_tolerances(rtol, atol, method)
    sde = check_sde(score_model, sde)
    t_end = sde.eps if eps is None else float(eps)
    if not 0 <= t_end < 1:
        raise ValueError(f"eps must lie in [0, 1), got {t_end}")
    x, y = start(score_model, sde, shape_or_noise, y, generator, device)
    score_fn = GuidedScore(score_model, y, guidance, generator)
    flat = _Flat(x)

    def velocity(t: float, state: np.ndarray) -> np.ndarray:
        xt = flat.tensor(state)
        return _Flat.numpy(flow_drift(sde, xt, as_time(t, xt.device), score_fn(xt, t)))

    def x0_from(state, v, t):  # invert v = f x - g^2 / 2 * score for the score, then Tweedie
        xt, vt, t = flat.tensor(state), flat.tensor(v), as_time(t, x.device)
        score = (sde.drift(xt, t) - vt) / (0.5 * broadcast(sde.diffusion(t), xt) ** 2)
        return tweedie_x0(xt, score, sde, t)

    solver = _SOLVERS[method](velocity, 1.0, _Flat.numpy(x), t_end, rtol=rtol, atol=atol)
    step = 0
    with tqdm(total=1.0 - t_end, desc="probability-flow ode", disable=not progress, leave=False) as bar:
        while solver.status == "running":
            t_before = solver.t
            message = solver.step()
            if solver.status == "failed":
                raise RuntimeError(f"the ODE solver failed at t = {solver.t:.4g}: {message}")
            bar.update(t_before - solver.t)
            if callback is not None:
                callback({"i": step, "t": float(solver.t), "sample": flat.tensor(solver.y),
                          "pred_xstart": x0_from(solver.y, solver.f, solver.t), "nfe": score_fn.nfe})
            step += 1
    final = flat.tensor(solver.y)
    x0 = tweedie_x0(final, score_fn(final, t_end), sde, t_end)
    result = x0 if denoise else final
    if callback is not None:
        callback({"i": step, "t": t_end, "sample": result, "pred_xstart": x0, "nfe": score_fn.nfe})
    return result


def _probes(kind: Probe, like: torch.Tensor, count: int, generator: Generators) -> list[torch.Tensor]:
    draws = [randn(like.shape, generator, like.device, like.dtype) for _ in range(count)]
    return [d.sign() for d in draws] if kind == "rademacher" else draws


def ode_likelihood(score_model: ScoreModel, sde: Optional[SDE], x: torch.Tensor, *, y: Optional[torch.Tensor] = None,
                   probe: Probe = "rademacher", num_probes: int = 1, num_bins: Optional[int] = 256,
                   dequantize: bool = True, eps: Optional[float] = None, rtol: float = 1e-5, atol: float = 1e-5,
                   method: Method = "RK45", generator: Generators = None) -> dict:
    """Exact log-likelihood (up to the trace estimator) through the probability-flow ODE.

    Args:
        score_model, sde: the model (``sde=None``: its own SDE); ``y``: labels of a class-conditional model.
        x: data (B, ...). With ``num_bins`` (256) it must be on the grid -1 + 2k / (num_bins - 1).
        probe: Hutchinson probes ``rademacher`` / ``gaussian`` (fixed per integration), or ``exact``.
        num_probes: probes averaged per evaluation (variance / num_probes, cost x num_probes).
        num_bins: levels of discrete data, for dequantisation and the bits/dim offset; None = continuous.
        dequantize: add u ~ U(-1/(num_bins - 1), 1/(num_bins - 1)) per dimension (with ``num_bins``).
        eps: start time of the integration (default min(sde.eps, 1e-5), as score_sde).
        generator: for the probes and the dequantisation noise (one, or one per sample).

    Returns a dict of per-sample tensors ``log_prob`` (nats, of the possibly dequantised input ``x``,
    float64), ``prior_log_prob``, ``delta_log_prob``, ``bpd``, ``z`` (the latent x(1)) and ``x``, and
    the number of drift evaluations ``nfe`` (each is one forward and ``num_probes`` backward passes).
    Guidance is not supported (the divergence would need the classifier's second derivatives).
    """
    _check_tolerances(rtol, atol, method)
    if probe not in ("rademacher", "gaussian", "exact"):
        raise ValueError(f"unknown probe {probe!r}; expected rademacher, gaussian or exact")
    if not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}")
    if num_bins is not None and (not isinstance(num_bins, int) or num_bins < 2):
        raise ValueError(f"num_bins must be an integer >= 2 or None, got {num_bins!r}")
    sde = check_sde(score_model, sde)
    t_start = min(sde.eps, 1e-5) if eps is None else float(eps)
    if not 0 <= t_start < 1:
        raise ValueError(f"eps must lie in [0, 1), got {t_start}")
    x, y = start(score_model, sde, x, y, None, None)
    if num_bins is not None and dequantize:
        half = 1.0 / (num_bins - 1)
        uniform = torch.special.ndtr(randn(x.shape, generator, x.device, torch.float64))  # Phi(N(0, 1)) ~ U(0, 1)
        x = (x + (2 * uniform - 1).to(x.dtype) * half)
    batch, dim = x.shape[0], x[0].numel()
    probes = [] if probe == "exact" else _probes(probe, x, num_probes, generator)
    flat = _Flat(x)
    nfe = 0

    def dynamics(t: float, state: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        xt = flat.tensor(state[:-batch]).detach().requires_grad_(True)
        tt = as_time(t, x.device).expand(batch)
        with torch.enable_grad():
            v = flow_drift(sde, xt, tt, score_model.score(xt, tt, y))
            if probe == "exact":
                rows = v.reshape(batch, dim)
                div = sum(torch.autograd.grad(rows[:, i].sum(), xt, retain_graph=i < dim - 1)[0]
                          .reshape(batch, dim)[:, i] for i in range(dim))
            else:
                div = 0
                for k, e in enumerate(probes):
                    (vjp,) = torch.autograd.grad((v * e).sum(), xt, retain_graph=k < len(probes) - 1)
                    div = div + (vjp * e).reshape(batch, -1).sum(1)
                div = div / len(probes)
        return np.concatenate([_Flat.numpy(v), _Flat.numpy(div)])

    initial = np.concatenate([_Flat.numpy(x), np.zeros(batch)])
    solution = integrate.solve_ivp(dynamics, (t_start, 1.0), initial, method=method, rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"the ODE solver failed: {solution.message}")
    end = solution.y[:, -1]
    z = flat.tensor(end[:-batch])
    delta = torch.from_numpy(end[-batch:].copy()).to(x.device)
    prior = sde.prior_log_prob(z.double())
    log_prob = prior + delta
    bpd = -log_prob / (dim * math.log(2))
    if num_bins is not None:
        bpd = bpd + math.log2((num_bins - 1) / 2)
    return {"log_prob": log_prob, "prior_log_prob": prior, "delta_log_prob": delta, "bpd": bpd, "z": z,
            "x": x, "nfe": nfe}


def ode_encode(score_model: ScoreModel, sde: Optional[SDE], x: torch.Tensor, *, y: Optional[torch.Tensor] = None,
               guidance=None, eps: Optional[float] = None, rtol: float = 1e-5, atol: float = 1e-5,
               method: Method = "RK45") -> dict:
    """The probability-flow latent x(1) of data x (integrating from ``eps`` up to 1): ``{"z", "nfe"}``.

    :func:`ode_sample` started from ``z`` (with ``denoise=False`` and the same ``eps``) decodes it.
    """
    _check_tolerances(rtol, atol, method)
    sde = check_sde(score_model, sde)
    t_start = sde.eps if eps is None else float(eps)
    x, y = start(score_model, sde, x, y, None, None)
    score_fn = GuidedScore(score_model, y, guidance)
    flat = _Flat(x)

    def velocity(t: float, state: np.ndarray) -> np.ndarray:
        xt = flat.tensor(state)
        return _Flat.numpy(flow_drift(sde, xt, as_time(t, xt.device), score_fn(xt, t)))

    solution = integrate.solve_ivp(velocity, (t_start, 1.0), _Flat.numpy(x), method=method, rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"the ODE solver failed: {solution.message}")
    return {"z": flat.tensor(solution.y[:, -1]), "nfe": score_fn.nfe}


__all__ = ["Method", "Probe", "flow_drift", "ode_sample", "ode_likelihood", "ode_encode"]
