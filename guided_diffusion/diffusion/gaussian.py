"""The Gaussian diffusion process of DDPM / improved DDPM, and how a network's output is read.

Notation follows Ho et al. (2020) and Nichol & Dhariwal (2021):

    q(x_t | x_0)       = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I),
        mu~_t    = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        beta~_t  = (1 - abar_{t-1}) / (1 - abar_t) beta_t
    p(x_{t-1} | x_t)   = N(mu_theta(x_t, t), Sigma_theta(x_t, t))

Schedules are float64 internally and float32 once looked up for a batch, as in the reference.
This module knows nothing about networks beyond ``model(x_t, t, y=None, **model_kwargs)``, where
``t`` is always the *original* integer timestep (the denoiser contract), also for a respaced process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence, get_args

import numpy as np
import torch

from ..tensor_checks import check_index_range
from .likelihood import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .noise_levels import DiscreteNoiseLevels
from .schedules import (
    ScheduleName,
    check_betas,
    get_named_beta_schedule,
    logsnr_spaced_timesteps,
    respaced_betas,
    space_timesteps,
)

MeanType = Literal["eps", "x0", "x_prev"]
"""What the network predicts for the mean: the noise eps, the clean image x_0, or mu directly."""
VarType = Literal["fixed_small", "fixed_large", "learned", "learned_range"]
"""Sigma_t: beta~_t (fixed_small), beta_t (fixed_large), exp(v) (learned) or
exp(v log beta_t + (1 - v) log beta~_t) with v mapped from [-1, 1] (learned_range)."""
LossType = Literal["mse", "rescaled_mse", "kl", "rescaled_kl"]
"""``mse`` is L_simple; with a learned variance it becomes the hybrid loss L_simple + L_vlb
(stop-gradient on the mean inside L_vlb). ``kl`` is L_vlb alone. ``rescaled_*`` multiply the vlb
term by T / 1000 (mse) or T (kl), as in improved DDPM."""

#: Optional transform applied to the predicted x_0 before it is used (e.g. dynamic thresholding).
DenoisedFn = Callable[[torch.Tensor], torch.Tensor]

BUFFER_NAMES = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next", "log_betas",
    "sqrt_alphas_cumprod", "one_minus_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "recip_posterior_mean_coef1",
    "posterior_mean_coef2_over_coef1", "fixed_large_variance", "fixed_large_log_variance",
)


def _check_choice(name: str, value: str, literal) -> None:
    if value not in get_args(literal):
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(get_args(literal))}")


class GaussianDiffusion:
    """A T-step Gaussian diffusion and the reading of a network's output as p(x_{t-1} | x_t).

    Args:
        betas: the noise schedule beta_1..beta_T (any explicit array; see ``schedules``).
        mean_type: what the network's first C output channels predict.
        var_type: how Sigma_theta is obtained; the ``learned*`` types read C more channels.
        loss_type: which training objective :meth:`training_losses` computes.
        timestep_map: for a respaced process, the original timestep of each of its steps. The
            model is always called with ``timestep_map[t]``. ``None`` means the identity.
        rescale_timesteps: the network sees the float ``timestep_map[t] * 1000 / T_orig`` instead
            (improved-diffusion's default: every model of that repository was trained so).
        original_num_timesteps: T_orig, the steps of the process the model was trained with
            (default: this process's own; respacing keeps it).
    """

    def __init__(self, betas: Sequence[float] | np.ndarray, *, mean_type: MeanType = "eps",
                 var_type: VarType = "fixed_large", loss_type: LossType = "mse",
                 timestep_map: Optional[Sequence[int]] = None, rescale_timesteps: bool = False,
                 original_num_timesteps: Optional[int] = None):
        _check_choice("mean_type", mean_type, MeanType)
        _check_choice("var_type", var_type, VarType)
        _check_choice("loss_type", loss_type, LossType)
        self.mean_type, self.var_type, self.loss_type = mean_type, var_type, loss_type
        self.betas = check_betas(betas)
        self.num_timesteps = T = len(self.betas)
        self.rescale_timesteps = bool(rescale_timesteps)
        self.original_num_timesteps = int(original_num_timesteps or T)
        if timestep_map is None:
            timestep_map = range(T)
        self.timestep_map = torch.as_tensor(list(timestep_map), dtype=torch.long)
        if self.timestep_map.shape != (T,):
            raise ValueError(f"timestep_map has {len(self.timestep_map)} entries for {T} betas")

        b = self.betas
        alphas = 1.0 - b
        self.alphas_cumprod = ac = np.cumprod(alphas)
        self.alphas_cumprod_prev = ac_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod_next = np.append(ac[1:], 0.0)
        self.log_betas = np.log(b)
        self.noise_levels = DiscreteNoiseLevels(ac)  # alpha_t, sigma_t, SNR_t, lambda_t of every step
        self.sqrt_alphas_cumprod = self.noise_levels.alphas
        self.one_minus_alphas_cumprod = 1.0 - ac
        self.sqrt_one_minus_alphas_cumprod = self.noise_levels.sigmas
        self.log_one_minus_alphas_cumprod = np.log(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        self.posterior_variance = b * (1.0 - ac_prev) / (1.0 - ac)
        # beta~_0 = 0: the log is clipped by repeating beta~_1 (the t = 0 step is the decoder).
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
            if T > 1 else self.posterior_variance.clip(min=1e-20))
        self.posterior_mean_coef1 = b * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        self.recip_posterior_mean_coef1 = 1.0 / self.posterior_mean_coef1
        self.posterior_mean_coef2_over_coef1 = self.posterior_mean_coef2 / self.posterior_mean_coef1
        # "fixed_large" uses beta_t, but beta~_1 at t = 0 for a better decoder likelihood.
        self.fixed_large_variance = np.append(self.posterior_variance[1] if T > 1 else b[0], b[1:])
        self.fixed_large_log_variance = np.log(self.fixed_large_variance)
        self._device_buffers: dict[tuple[str, torch.device], torch.Tensor] = {}

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_schedule(cls, noise_schedule: ScheduleName, steps: int = 1000, **kwargs) -> "GaussianDiffusion":
        """A diffusion with a named schedule (``"linear"`` or ``"cosine"``) of ``steps`` steps."""
        return cls(get_named_beta_schedule(noise_schedule, steps), **kwargs)

    def respace(self, spec: str | int | Sequence[int] | None) -> "GaussianDiffusion":
        """The process that visits only the steps chosen by ``spec`` (see :func:`space_timesteps`).

        ``spec`` is anything :func:`space_timesteps` takes ("250", "10,15,20", "ddim25") or
        "logsnrN" (N steps uniform in log-SNR). Betas are recomputed from abar so the marginals
        at the kept steps are unchanged; the timestep map composes, so the model still sees
        original timesteps.
        """
        if spec is None or spec == "":
            return self
        if isinstance(spec, str) and spec.strip().startswith("logsnr"):
            count = spec.strip()[len("logsnr"):]
            if not count.isdigit():
                raise ValueError(f"cannot parse respacing {spec!r}: expected e.g. 'logsnr20'")
            return self.subsequence(logsnr_spaced_timesteps(self.alphas_cumprod, int(count)))
        return self.subsequence(space_timesteps(self.num_timesteps, spec))

    def subsequence(self, kept: Sequence[int]) -> "GaussianDiffusion":
        """The process that visits only the given steps of this one (sorted, unique, in range)."""
        kept = sorted(set(int(k) for k in kept))
        if not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(f"kept steps must be a non-empty subset of [0, {self.num_timesteps - 1}]")
        return GaussianDiffusion(respaced_betas(self.alphas_cumprod, kept), mean_type=self.mean_type,
                                 var_type=self.var_type, loss_type=self.loss_type,
                                 timestep_map=self.timestep_map[kept].tolist(),
                                 rescale_timesteps=self.rescale_timesteps,
                                 original_num_timesteps=self.original_num_timesteps)

    def __repr__(self) -> str:
        rescaled = f", rescale_timesteps=True (T_orig={self.original_num_timesteps})" if self.rescale_timesteps else ""
        return (f"GaussianDiffusion(T={self.num_timesteps}, mean_type={self.mean_type!r}, "
                f"var_type={self.var_type!r}, loss_type={self.loss_type!r}{rescaled}, "
                f"respaced={not torch.equal(self.timestep_map, torch.arange(self.num_timesteps))})")

    @property
    def learns_variance(self) -> bool:
        return self.var_type in ("learned", "learned_range")

    # ------------------------------------------------------------------ lookups
    def _buffer(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device)
        buf = self._device_buffers.get(key)
        if buf is None:
            buf = self._device_buffers[key] = torch.as_tensor(getattr(self, name)).to(device)
        return buf

    def extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Schedule array ``name`` at timesteps t, float32, shaped (B, 1, ..., 1) to broadcast over ndim."""
        value = self._buffer(name, t.device)[t].float()
        return value.reshape(value.shape + (1,) * (ndim - 1))

    def check_timesteps(self, t: torch.Tensor, batch_size: Optional[int] = None) -> None:
        """Raise a ValueError unless t is an integer tensor of shape (B,) with 0 <= t < T."""
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim != 1:
            raise ValueError(f"t must be a 1-d integer tensor of timesteps, got {t!r:.80}")
        if batch_size is not None and t.shape[0] != batch_size:
            raise ValueError(f"t has {t.shape[0]} timesteps for a batch of {batch_size}")
        check_index_range(t, self.num_timesteps, "timestep")  # no host sync on an accelerator

    @property
    def timestep_scale(self) -> Optional[float]:
        """1000 / T_orig when the network sees rescaled timesteps, else None."""
        return 1000.0 / self.original_num_timesteps if self.rescale_timesteps else None

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the network (and a classifier) must see for this process's t: the original
        ones, as float ``original * 1000 / T_orig`` with ``rescale_timesteps`` (as improved-diffusion)."""
        original = self._buffer("timestep_map", t.device)[t]
        return original.float() * self.timestep_scale if self.rescale_timesteps else original

    def call_model(self, model: Callable, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                   model_kwargs: Optional[dict] = None) -> torch.Tensor:
        """``model(x, original_t, y=y, **model_kwargs)``; ``y`` is passed only when given."""
        kwargs = dict(model_kwargs or {})
        if y is not None:
            kwargs["y"] = y
        return model(x, self.model_timesteps(t), **kwargs)

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        self.check_timesteps(t, x_start.shape[0])
        mean = self.extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
        variance = self.extract("one_minus_alphas_cumprod", t, x_start.ndim)
        return mean, variance, self.extract("log_one_minus_alphas_cumprod", t, x_start.ndim)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        self.check_timesteps(t, x_start.shape[0])
        if noise is None:
            noise = torch.randn_like(x_start)
        elif noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start {tuple(x_start.shape)}")
        return (self.extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
                + self.extract("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) * noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        n = x_t.ndim
        mean = (self.extract("posterior_mean_coef1", t, n) * x_start
                + self.extract("posterior_mean_coef2", t, n) * x_t)
        return (mean, self.extract("posterior_variance", t, n),
                self.extract("posterior_log_variance_clipped", t, n))

    # ------------------------------------------------------------------ parameterisations
    def predict_xstart_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (self.extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t
                - self.extract("sqrt_recipm1_alphas_cumprod", t, x_t.ndim) * eps)

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1)."""
        return ((self.extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t - pred_xstart)
                / self.extract("sqrt_recipm1_alphas_cumprod", t, x_t.ndim))

    def predict_xstart_from_xprev(self, x_t, t, x_prev):
        """Invert mu~_t(x_0, x_t) = x_prev for x_0."""
        return (self.extract("recip_posterior_mean_coef1", t, x_t.ndim) * x_prev
                - self.extract("posterior_mean_coef2_over_coef1", t, x_t.ndim) * x_t)

    def split_output(self, model_output: torch.Tensor, x: torch.Tensor):
        """(mean part, variance part or None) of a network output for input x."""
        channels = x.shape[1]
        if self.learns_variance:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(f"var_type {self.var_type!r} needs {2 * channels} output channels "
                                 f"(mean and variance), the model gave {model_output.shape[1]}")
            return model_output[:, :channels], model_output[:, channels:]
        if model_output.shape[1] != channels:
            raise ValueError(f"var_type {self.var_type!r} needs {channels} output channels, the model "
                             f"gave {model_output.shape[1]} (a learned-variance model needs var_type "
                             f"'learned_range')")
        return model_output, None

    def output_variance(self, var_values: Optional[torch.Tensor], x: torch.Tensor, t: torch.Tensor):
        """Sigma_theta(x_t, t) and its log, from the variance channels or the fixed schedule."""
        n = x.ndim
        if self.var_type == "learned":
            return torch.exp(var_values), var_values
        if self.var_type == "learned_range":
            min_log = self.extract("posterior_log_variance_clipped", t, n)
            max_log = self.extract("log_betas", t, n)
            frac = (var_values + 1) / 2  # v in [-1, 1] -> [0, 1]
            log_variance = frac * max_log + (1 - frac) * min_log
            return torch.exp(log_variance), log_variance
        if self.var_type == "fixed_large":
            variance = self.extract("fixed_large_variance", t, n)
            return variance.expand_as(x), self.extract("fixed_large_log_variance", t, n).expand_as(x)
        variance = self.extract("posterior_variance", t, n)
        return variance.expand_as(x), self.extract("posterior_log_variance_clipped", t, n).expand_as(x)

    def interpret_output(self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, *,
                         clip_denoised: bool = True, denoised_fn: Optional[DenoisedFn] = None) -> dict:
        """Read a network output as p(x_{t-1} | x_t).

        Returns a dict with ``mean``, ``variance``, ``log_variance``, ``pred_xstart`` (after
        ``denoised_fn`` and clipping to [-1, 1]) and ``eps`` (the noise implied by that x_0).
        """
        mean_out, var_values = self.split_output(model_output, x)
        variance, log_variance = self.output_variance(var_values, x, t)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.mean_type == "x_prev":
            pred_xstart = process_xstart(self.predict_xstart_from_xprev(x, t, mean_out))
            mean = mean_out
        else:
            raw = mean_out if self.mean_type == "x0" else self.predict_xstart_from_eps(x, t, mean_out)
            pred_xstart = process_xstart(raw)
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart, "eps": self.predict_eps_from_xstart(x, t, pred_xstart)}

    def p_mean_variance(self, model: Callable, x: torch.Tensor, t: torch.Tensor, *,
                        y: Optional[torch.Tensor] = None, clip_denoised: bool = True,
                        denoised_fn: Optional[DenoisedFn] = None, model_kwargs: Optional[dict] = None) -> dict:
        """Call the model at (x_t, t) and return p(x_{t-1} | x_t) as :meth:`interpret_output` does."""
        self.check_timesteps(t, x.shape[0])
        out = self.call_model(model, x, t, y, model_kwargs)
        return self.interpret_output(out, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn)

    # ------------------------------------------------------------------ variational bound
    def vb_terms_from_output(self, model_output, x_start, x_t, t, *, clip_denoised: bool = True) -> dict:
        """L_t in bits per dimension for a given network output.

        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, and the discretised
        Gaussian decoder -log p(x_0 | x_1) at t = 0. Returns ``output`` (B,) and ``pred_xstart``.
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.interpret_output(model_output, x_t, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def vb_terms_bpd(self, model: Callable, x_start, x_t, t, *, y=None, clip_denoised: bool = True,
                     model_kwargs: Optional[dict] = None) -> dict:
        """:meth:`vb_terms_from_output` for the model's output at (x_t, t)."""
        self.check_timesteps(t, x_start.shape[0])
        out = self.call_model(model, x_t, t, y, model_kwargs)
        return self.vb_terms_from_output(out, x_start, x_t, t, clip_denoised=clip_denoised)

    def training_losses(self, model: Callable, x_start: torch.Tensor, t: torch.Tensor, *,
                        y: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                        model_kwargs: Optional[dict] = None, mse_weight: Optional[torch.Tensor] = None) -> dict:
        """Per-example training losses at timesteps t: ``loss`` and, as they apply, ``mse``, ``vb``.

        For ``loss_type="mse"`` with a learned variance this is the hybrid loss of improved DDPM:
        the vlb term sees the mean with its gradient stopped, so only Sigma_theta learns from it.
        ``mse_weight`` (per example, e.g. :func:`~guided_diffusion.diffusion.weighting.mse_weights`
        at t) weights the MSE term only: ``loss = mse_weight * mse (+ vb)``; ``mse`` stays unweighted.
        """
        self.check_timesteps(t, x_start.shape[0])
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms: dict[str, torch.Tensor] = {}
        if self.loss_type in ("kl", "rescaled_kl"):
            terms["loss"] = self.vb_terms_bpd(model, x_start, x_t, t, y=y, clip_denoised=False,
                                              model_kwargs=model_kwargs)["output"]
            if self.loss_type == "rescaled_kl":
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        model_output = self.call_model(model, x_t, t, y, model_kwargs)
        mean_out, var_values = self.split_output(model_output, x_t)
        if var_values is not None:
            frozen = torch.cat([mean_out.detach(), var_values], dim=1)
            terms["vb"] = self.vb_terms_from_output(frozen, x_start, x_t, t, clip_denoised=False)["output"]
            if self.loss_type == "rescaled_mse":
                # Divide by 1000 for equivalence with the initial implementation; without it the
                # vb term would hurt the MSE term (comment of improved DDPM).
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        if self.mean_type == "x_prev":
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        else:
            target = x_start if self.mean_type == "x0" else noise
        terms["mse"] = mean_flat((target - mean_out) ** 2)
        weighted = terms["mse"] if mse_weight is None else mse_weight * terms["mse"]
        terms["loss"] = weighted + terms["vb"] if "vb" in terms else weighted
        return terms

    def prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in bits per dimension, per example."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x_start.device)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)

    @torch.no_grad()
    def calc_bpd_loop(self, model: Callable, x_start: torch.Tensor, *, y=None, clip_denoised: bool = True,
                      model_kwargs: Optional[dict] = None, generator: Optional[torch.Generator] = None,
                      progress: bool = False) -> dict:
        """The full variational bound -log p(x_0) <= L_0 + ... + L_{T-1} + L_T, in bits per dimension.

        Returns per example ``total_bpd`` and ``prior_bpd``, and per example and step (B, T) the
        terms ``vb``, ``xstart_mse`` and ``mse`` (of eps).
        """
        vb, xstart_mse, mse = [], [], []
        steps = reversed(range(self.num_timesteps))
        if progress:
            from tqdm.auto import tqdm
            steps = tqdm(list(steps), desc="bpd")
        for i in steps:
            t = torch.full((x_start.shape[0],), i, dtype=torch.long, device=x_start.device)
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
            x_t = self.q_sample(x_start, t, noise=noise)
            out = self.vb_terms_bpd(model, x_start, x_t, t, y=y, clip_denoised=clip_denoised,
                                    model_kwargs=model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self.predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))
        vb_t = torch.stack(vb[::-1], dim=1)  # column i holds L_i
        prior = self.prior_bpd(x_start)
        return {"total_bpd": vb_t.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb_t,
                "xstart_mse": torch.stack(xstart_mse[::-1], dim=1), "mse": torch.stack(mse[::-1], dim=1)}


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion settings guided-diffusion users know, mapped to typed options in one place.

    Args:
        steps: T, the number of diffusion steps the model is trained with.
        noise_schedule: ``"linear"`` (DDPM) or ``"cosine"`` (improved DDPM).
        learn_sigma: the network outputs a variance interpolation v (var_type ``learned_range``).
        sigma_small: with a fixed variance, use beta~_t instead of beta_t.
        predict_xstart: the network predicts x_0 instead of eps.
        use_kl: train on L_vlb alone, rescaled by T (``rescaled_kl``: what both reference repositories
            build whenever ``use_kl`` is set, whatever ``rescale_learned_sigmas`` says).
        rescale_learned_sigmas: scale the vlb term of the hybrid loss by T / 1000 (``rescaled_mse``).
        rescale_timesteps: the network sees ``t * 1000 / steps`` as a float (improved-diffusion's default).
        timestep_respacing: the sampling respacing of the reference flags ("" = none): applied by
            :meth:`build_for_sampling`, never by :meth:`build` (training always sees all ``steps``).
    """

    steps: int = 1000
    noise_schedule: ScheduleName = "linear"
    learn_sigma: bool = False
    sigma_small: bool = False
    predict_xstart: bool = False
    use_kl: bool = False
    rescale_learned_sigmas: bool = False
    rescale_timesteps: bool = False
    timestep_respacing: str = ""

    def build(self) -> GaussianDiffusion:
        """The process of all ``steps`` timesteps, the one a model is trained with."""
        if self.use_kl:
            loss_type = "rescaled_kl"
        else:
            loss_type = "rescaled_mse" if self.rescale_learned_sigmas else "mse"
        var_type = "learned_range" if self.learn_sigma else ("fixed_small" if self.sigma_small else "fixed_large")
        diffusion = GaussianDiffusion.from_schedule(
            self.noise_schedule, self.steps, mean_type="x0" if self.predict_xstart else "eps",
            var_type=var_type, loss_type=loss_type, rescale_timesteps=self.rescale_timesteps)
        return diffusion

    def build_for_sampling(self) -> GaussianDiffusion:
        """The process respaced by ``timestep_respacing`` (the reference's ``create_gaussian_diffusion``).

        The project's samplers take the full process and respace it themselves (``steps=``); this is
        for code that wants the reference's respaced object.
        """
        return self.build().respace(self.timestep_respacing)
