"""Controllable generation with unconditional models: inpainting, colorization, latent interpolation.

**Inpainting** (Song et al. 2021, App. I.2) is a :class:`~guided_diffusion.sampling.Guidance`, so
*every* sampler takes it unchanged — DDPM ancestral, DDIM, DPM-Solver and all SDE samplers, also
combined with classifier guidance. Its ``wrap_model`` wraps the network ``model(x_t, t, y=None)``:

1. the known coordinates of the network's input are replaced by the observation noised to the
   current level, a_t y + sigma_t z with fresh z (the paper's x(t) = [Omega_bar(x(t)); y^(t)]);
2. the prediction returned for the known coordinates is the exact one for the observation:
   eps = (x_t - a_t y) / sigma_t (x_0 = y for x0-predicting models), i.e. score -(x_t - a_t y) / sigma_t^2.

Step 1 drives the unknown coordinates exactly as replacing the sampler's state would (their update
only depends on their own values and the prediction); step 2 makes the sampler's x_0 estimate equal
y on the known coordinates, so the known part of the result is the observation itself, in any
sampler, without touching the sampler. The replacement is the paper's approximation of
grad log p_t(x | y): with a noisy stand-in for y the unknown part is slightly less informed at high
noise than the exact conditional would be (``tests/test_sde_controllable.py`` compares the two on the oracle).

Masks may live in an orthonormal basis of the channel axis (``basis``): **colorization** is
inpainting of the grey channel of the decoupled colour space (Song et al. 2021, App. I.3)

    [u0, u1, u2] = M [R, G, B],  M rows (1, 1, 1)/sqrt 3, (-2, 1, 1)/sqrt 6, (0, 1, -1)/sqrt 2,

orthogonal, with u0 = sqrt(3) * grey. Isotropic noise stays isotropic in it.

**Interpolation** (Ho et al. 2020, Sec. 4.3): encode two images to a latent at step t with the
stochastic encoder q(x_t | x_0) or deterministically with DDIM inversion, interpolate (linearly, or
spherically for noise-like latents), and decode with the reverse process from t.

**One call each** (what a command wires up), in the sampler signature style, for a DDPM/ADM eps
model with its original ``GaussianDiffusion`` (every sampler of ``guided_diffusion.sampling``) or a
score model with its SDE (:data:`SDE_SAMPLERS`)::

    inpaint(model, diffusion, x_known, mask, *, sampler=None, num_samples=None, y=None, guidance=None,
            steps=None, generator=None, progress=True, callback=None, noise=None, **sampler_options) -> (B, C, H, W)
    colorize(model, diffusion, grey, *, <the same keywords>) -> (B, 3, H, W)
    interpolate(model, diffusion, x_a, x_b, weights, *, encoder="q", t=None, mode=None, sampler=None,
                steps=None, generator=None, decode_seed=0, **sample_options) -> (len(weights), B, C, H, W)
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
from torch import nn

from ..guidance import Guidance
from ..noise import Generators, randn
from ..sampler_protocol import StepCallback
from ..sde.registry import SCORE_SAMPLERS
from ..sde.sdes import SDE, broadcast
from .ddim import ddim_invert
from .registry import sample

COLOR_BASIS = torch.tensor([[1 / math.sqrt(3)] * 3,
                            [-2 / math.sqrt(6), 1 / math.sqrt(6), 1 / math.sqrt(6)],
                            [0.0, 1 / math.sqrt(2), -1 / math.sqrt(2)]], dtype=torch.float64)
"""Rows: grey (u0 = sqrt(3) mean(R, G, B)) and two chroma axes; orthonormal."""


def to_basis(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """u[:, i] = sum_j basis[i, j] x[:, j] over the channel axis (dim 1)."""
    return torch.einsum("ij,bj...->bi...", basis.to(x.device, x.dtype), x)


def from_basis(u: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_basis` for an orthonormal basis (the transpose)."""
    return torch.einsum("ji,bj...->bi...", basis.to(u.device, u.dtype), u)


def to_decoupled(x: torch.Tensor) -> torch.Tensor:
    """RGB -> decoupled colour space (channel 0 = sqrt(3) * grey)."""
    return to_basis(x, COLOR_BASIS)


def from_decoupled(u: torch.Tensor) -> torch.Tensor:
    """Decoupled colour space -> RGB."""
    return from_basis(u, COLOR_BASIS)


def _noise_levels(process, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, sigma) at the network time t, for a GaussianDiffusion (original timesteps) or an SDE."""
    if isinstance(process, SDE):
        return process.model_noise_level(t)
    abar = torch.as_tensor(process.alphas_cumprod, dtype=torch.float64, device=t.device)[t.long()]
    return abar.sqrt(), (1 - abar).sqrt()


class Inpainting(Guidance):
    """Condition any sampler on known coordinates of x_0 (see the module docstring).

    Args:
        observation: y, shaped like the samples (B, C, ...) or broadcastable to them.
        mask: 1 where y is known, 0 elsewhere, broadcastable to the samples (in ``basis``
            coordinates if a basis is given).
        process: what the network's time means: the *original* GaussianDiffusion of a DDPM model,
            or the SDE of a score model (``score_model.sde``).
        prediction: what the network's first C channels predict (``"eps"``/``"x0"``; default:
            the diffusion's mean type, or eps).
        basis: an orthonormal (C, C) matrix; the mask and the replacement act on ``basis @ x``.
        generator: for the fresh noise of each replacement (one, or one per sample).
    """

    def __init__(self, observation: torch.Tensor, mask: torch.Tensor, process, *,
                 prediction: Optional[Literal["eps", "x0"]] = None, basis: Optional[torch.Tensor] = None,
                 generator: Generators = None):
        if not isinstance(process, SDE):
            if not torch.equal(process.timestep_map, torch.arange(process.num_timesteps)):
                raise ValueError("pass the original (not respaced) diffusion: networks see original timesteps")
            if prediction is None:
                if process.mean_type == "x_prev":
                    raise ValueError("inpainting needs an eps or x0 model, not mean_type 'x_prev'")
                prediction = process.mean_type
        prediction = prediction or "eps"
        if prediction not in ("eps", "x0"):
            raise ValueError(f"unknown prediction {prediction!r}; expected 'eps' or 'x0'")
        if basis is not None:
            basis = torch.as_tensor(basis, dtype=torch.float64)
            eye = torch.eye(basis.shape[0], dtype=torch.float64)
            square = basis.ndim == 2 and basis.shape[0] == basis.shape[1]
            if not square or not torch.allclose(basis @ basis.T, eye, atol=1e-6):
                raise ValueError("basis must be an orthonormal square matrix")
        self.basis = basis
        self.observation = observation
        self.mask = torch.as_tensor(mask, dtype=observation.dtype, device=observation.device)
        if ((self.mask != 0) & (self.mask != 1)).any():
            raise ValueError("the inpainting mask must hold only 0 (unknown) and 1 (known)")
        self.process, self.prediction, self.generator = process, prediction, generator

    @property
    def active(self) -> bool:
        return True

    def wrap_model(self, model):
        return InpaintedModel(model, self)

    def to_coords(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.basis is None else to_basis(x, self.basis)

    def from_coords(self, u: torch.Tensor) -> torch.Tensor:
        return u if self.basis is None else from_basis(u, self.basis)


class InpaintedModel(nn.Module):
    """``model(x_t, t, y=None)`` seeing the noised observation on the known coordinates (see :class:`Inpainting`)."""

    def __init__(self, model, inpainting: Inpainting):
        super().__init__()
        self.model, self.inpainting = model, inpainting
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        spec = self.inpainting
        if spec.observation.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"the inpainting observation has batch {spec.observation.shape[0]}, the model input "
                             f"{x.shape[0]} (put Inpainting after ClassifierFreeGuidance in a guidance list)")
        a, sigma = (broadcast(v, x) for v in _noise_levels(spec.process, t))
        mask = spec.mask.to(x.device, x.dtype)
        u, u_obs = spec.to_coords(x), spec.to_coords(spec.observation.to(x.device, x.dtype).expand_as(x))
        noisy = a * u_obs + sigma * randn(x.shape, spec.generator, x.device, x.dtype)
        x_in = spec.from_coords(mask * noisy + (1 - mask) * u)
        out = self.model(x_in, t, **kwargs) if y is None else self.model(x_in, t, y=y, **kwargs)
        channels = x.shape[1]
        known = u_obs if spec.prediction == "x0" else (u - a * u_obs) / sigma
        prediction = spec.from_coords(mask * known + (1 - mask) * spec.to_coords(out[:, :channels]))
        return torch.cat([prediction.to(out.dtype), out[:, channels:]], dim=1)


def colorization(grey: torch.Tensor, process, **options) -> Inpainting:
    """Inpainting of the grey channel: colour images whose mean over RGB is ``grey`` (B, 1, ...) or (B, ...).

    The DDPM samplers clip x_0 to [-1, 1] in RGB after the guidance (``clip_denoised=True``), which
    moves the grey of out-of-gamut colour predictions; with ``clip_denoised=False`` (and in the SDE
    samplers) the output's grey is the input's to float precision.
    """
    if grey.ndim >= 2 and grey.shape[1] != 1:
        grey = grey.unsqueeze(1)
    u = torch.cat([math.sqrt(3) * grey, torch.zeros_like(grey), torch.zeros_like(grey)], dim=1)
    mask = torch.tensor([1.0, 0.0, 0.0], dtype=grey.dtype, device=grey.device).reshape((1, 3) + (1,) * (grey.ndim - 2))
    return Inpainting(from_decoupled(u), mask, process, basis=COLOR_BASIS, **options)


# ---------------------------------------------------------------------------------------------- one-call API
#: samplers of an SDE score model (``process`` an SDE): the fixed-grid ones of :data:`~..sde.registry.SCORE_SAMPLERS`;
#: a GaussianDiffusion takes every name of ``guided_diffusion.sampling.SAMPLERS``. The adaptive probability-flow
#: ODE is left out: the fresh noise of every replacement would make its right-hand side random, which an adaptive
#: solver cannot integrate.
SDE_SAMPLERS = tuple(name for name, spec in SCORE_SAMPLERS.items() if spec.grid == "fixed")


def _guidance_list(guidance) -> list:
    if guidance is None:
        return []
    if isinstance(guidance, Guidance):
        return [guidance]
    if isinstance(guidance, (list, tuple)) and all(isinstance(g, Guidance) for g in guidance):
        return list(guidance)
    raise TypeError(f"guidance must be a Guidance object or a list of them, got {type(guidance).__name__}")


def controlled_sample(model, process, condition: Inpainting, shape_or_noise, *, sampler: Optional[str] = None,
                      y: Optional[torch.Tensor] = None, guidance=None, **options) -> torch.Tensor:
    """Run ``sampler`` with ``condition`` appended to ``guidance`` (after it: see :class:`Inpainting`).

    ``process`` is the model's original GaussianDiffusion (``model(x_t, t, y=None)`` an eps/x0
    network; any sampler of ``guided_diffusion.sampling.SAMPLERS``, default ``ddim``) or an SDE
    (``model`` a score model such as ``EpsScoreModel`` or ``NoiseConditionalScoreNetwork.score_model()``;
    a sampler of :data:`SDE_SAMPLERS`, default ``pc``); ``None`` means ``model.sde``. ``steps=None``
    is the sampler's own default.
    """
    guidances = _guidance_list(guidance) + [condition]
    if isinstance(process, SDE):
        if options.get("steps", 0) is None:
            del options["steps"]
        name = sampler or "pc"
        if name not in SDE_SAMPLERS:
            raise ValueError(f"unknown SDE sampler {name!r}; expected one of {', '.join(SDE_SAMPLERS)}")
        return SCORE_SAMPLERS[name].function(model, process, shape_or_noise, y=y, guidance=guidances, **options)
    return sample(model, process, shape_or_noise, sampler=sampler or "ddim", y=y, guidance=guidances, **options)


def _resolve_process(model, process):
    if process is None:
        process = getattr(model, "sde", None)
        if process is None:
            raise ValueError("pass the model's diffusion (a GaussianDiffusion) or SDE: the model has no `sde`")
    return process


def _batch(x: torch.Tensor, num_samples: Optional[int], name: str) -> torch.Tensor:
    if x.ndim < 2:
        raise ValueError(f"{name} must be a batch (B, C, ...), got shape {tuple(x.shape)}")
    if num_samples is None:
        return x
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if x.shape[0] == num_samples:
        return x
    if x.shape[0] != 1:
        raise ValueError(f"{name} has batch {x.shape[0]}: give one image (batch 1) for num_samples={num_samples}, "
                         "or exactly num_samples images")
    return x.expand(num_samples, *x.shape[1:])


def inpaint(model, process, x_known: torch.Tensor, mask: torch.Tensor, *, sampler: Optional[str] = None,
            num_samples: Optional[int] = None, y: Optional[torch.Tensor] = None, guidance=None, steps=None,
            generator: Generators = None, progress: bool = True, callback: StepCallback = None, noise=None,
            **options) -> torch.Tensor:
    """Fill in the unknown pixels of ``x_known`` with any sampler (Song et al. 2021, App. I.2).

    Args:
        model: ``model(x_t, t, y=None)`` (eps or x0 network) with ``process`` its *original*
            GaussianDiffusion, or a score model with ``process`` its SDE (or ``None``: ``model.sde``).
        x_known: images (B, C, H, W) in [-1, 1]; only the pixels where ``mask`` is 1 are read.
        mask: 1 = known (kept), 0 = to generate; broadcastable to ``x_known`` ((H, W), (1, 1, H, W),
            (B, C, H, W), ...), values 0/1 only.
        sampler: for a GaussianDiffusion any name of ``guided_diffusion.sampling.SAMPLERS``
            (default ``"ddim"``), for an SDE one of :data:`SDE_SAMPLERS` (default ``"pc"``).
        num_samples: expand a single image (batch 1) to this many samples.
        y: class labels (B,) (class-conditional model and/or classifier guidance).
        guidance: other guidance (classifier / classifier-free), applied before the inpainting.
        steps: the sampler's ``steps`` (a respacing such as ``"ddim50"`` / ``"250"`` for a
            GaussianDiffusion; a step count for the SDE samplers); ``None``: the sampler's default.
        generator: one ``torch.Generator`` or one per sample; drives both the sampler's noise and
            the fresh noise of the replaced pixels.
        progress: show a progress bar.
        callback: the sampler's per-step callback (:data:`~guided_diffusion.sampler_protocol.StepCallback`).
        noise: the starting x_T instead of drawing it.
        options: the sampler's options, e.g. ``eta``, ``clip_denoised``, ``snr``, ``corrector_steps``.

    Returns (B, C, H, W); the known pixels equal ``x_known`` (to float precision, up to the
    DDPM samplers' x_0 clipping to [-1, 1]).
    """
    process = _resolve_process(model, process)
    x_known = _batch(x_known, num_samples, "x_known")
    mask = torch.as_tensor(mask, dtype=x_known.dtype, device=x_known.device)
    try:
        torch.broadcast_shapes(mask.shape, x_known.shape)
    except RuntimeError:
        raise ValueError(f"the mask {tuple(mask.shape)} does not broadcast to the images "
                         f"{tuple(x_known.shape)}") from None
    condition = Inpainting(x_known, mask, process, generator=generator)
    start = x_known.shape if noise is None else noise
    if noise is not None and noise.shape != x_known.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the shape of x_known {tuple(x_known.shape)}")
    return controlled_sample(model, process, condition, start, sampler=sampler, y=y, guidance=guidance, steps=steps,
                             generator=generator, progress=progress, callback=callback, **options)


def _grey_channel(grey: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) grey levels from (B, 1, ...), RGB (B, 3, ...) (their mean) or images (B, H, W)."""
    if grey.ndim >= 2 and grey.shape[1] == 1:
        return grey
    if grey.ndim >= 2 and grey.shape[1] == 3:
        return grey.mean(1, keepdim=True)
    if grey.ndim == 3:
        return grey.unsqueeze(1)
    raise ValueError(f"grey must be (B, 1, H, W), (B, H, W) or RGB (B, 3, H, W) (its channel mean is used), "
                     f"got shape {tuple(grey.shape)}")


def colorize(model, process, grey: torch.Tensor, *, sampler: Optional[str] = None,
             num_samples: Optional[int] = None, y: Optional[torch.Tensor] = None, guidance=None, steps=None,
             generator: Generators = None, progress: bool = True, callback: StepCallback = None, noise=None,
             **options) -> torch.Tensor:
    """Colour images whose grey level (mean over RGB) is ``grey`` (Song et al. 2021, App. I.3), any sampler.

    ``model`` must be an RGB (3-channel) model; ``grey`` is (B, 1, H, W), (B, H, W), or RGB
    (B, 3, H, W) whose channel mean is taken, in [-1, 1] (any (B, 1, ...) / (B, 3, ...) layout).
    The other arguments are those of :func:`inpaint`. Returns (B, 3, H, W) whose channel mean is ``grey`` (exactly with
    ``clip_denoised=False`` or the SDE samplers; the DDPM samplers' clipping of x_0 to [-1, 1] can
    move the grey of out-of-gamut colours).
    """
    process = _resolve_process(model, process)
    grey = _batch(_grey_channel(grey), num_samples, "grey")
    condition = colorization(grey, process, generator=generator)
    shape = (grey.shape[0], 3) + tuple(grey.shape[2:])
    if noise is not None and tuple(noise.shape) != shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the shape of the colour images {shape}")
    return controlled_sample(model, process, condition, shape if noise is None else noise, sampler=sampler, y=y,
                             guidance=guidance, steps=steps, generator=generator, progress=progress, callback=callback,
                             **options)


def slerp(z0: torch.Tensor, z1: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation per sample: sin((1 - w) theta) / sin theta z0 + sin(w theta) / sin theta z1."""
    a, b = z0.reshape(len(z0), -1).double(), z1.reshape(len(z1), -1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-30)
    theta = torch.arccos(cos.clamp(-1, 1))
    small = theta < 1e-6
    s = torch.sin(theta).clamp(min=1e-30)
    w0 = torch.where(small, 1 - weight, torch.sin((1 - weight) * theta) / s)
    w1 = torch.where(small, torch.full_like(theta, weight), torch.sin(weight * theta) / s)
    return (broadcast(w0, z0) * z0.double() + broadcast(w1, z1) * z1.double()).to(z0.dtype)


def interpolate(model, diffusion, x_a: torch.Tensor, x_b: torch.Tensor, weights: Sequence[float], *,
                encoder: Literal["q", "ddim"] = "q", t: Optional[int] = None,
                mode: Optional[Literal["linear", "slerp"]] = None, sampler: Optional[str] = None,
                steps: str | int | None = None, generator: Generators = None, decode_seed: Optional[int] = 0,
                **sample_options) -> torch.Tensor:
    """Latent interpolation between image batches x_a and x_b (same shape), one output row per weight.

    Args:
        model, diffusion: a DDPM model and its original diffusion.
        weights: interpolation weights lambda (0 gives x_a's latent, 1 x_b's).
        encoder: ``"q"``: x_t ~ q(x_t | x_0) (DDPM paper; independent noise for a and b, from
            ``generator``); ``"ddim"``: deterministic DDIM inversion (with ``steps``).
        t: the original timestep of the latent (default T/2 for ``q``, T - 1 for ``ddim``).
        mode: ``linear`` (default for ``q``) or ``slerp`` (default for ``ddim``, noise-like latents).
        sampler: decoder (default ``ddpm`` for ``q``, ``ddim`` for ``ddim``), walking steps t..0
            with the respacing ``steps``; ``decode_seed`` gives every weight the same decoding
            noise (per-sample generators seeded decode_seed + i; None: the global RNG).
        sample_options: passed to the sampler (e.g. ``clip_denoised=False``, ``y``).

    Returns a tensor (len(weights), *x_a.shape).
    """
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a {tuple(x_a.shape)} and x_b {tuple(x_b.shape)} must have the same shape")
    if encoder not in ("q", "ddim"):
        raise ValueError(f"unknown encoder {encoder!r}; expected 'q' or 'ddim'")
    T = diffusion.num_timesteps
    t = (T // 2 if encoder == "q" else T - 1) if t is None else int(t)
    if not 0 <= t < T:
        raise ValueError(f"t must be an original timestep in [0, {T - 1}], got {t}")
    mode = mode or ("linear" if encoder == "q" else "slerp")
    if mode not in ("linear", "slerp"):
        raise ValueError(f"unknown interpolation mode {mode!r}; expected 'linear' or 'slerp'")
    sampler = sampler or ("ddpm" if encoder == "q" else "ddim")
    head = diffusion.subsequence(range(t + 1))  # steps 0..t: the reverse process from the latent's level
    both = torch.cat([x_a, x_b])
    if encoder == "q":
        noise = randn(both.shape, generator, both.device, both.dtype)
        latents = diffusion.q_sample(both, torch.full((len(both),), t, device=both.device), noise=noise)
    else:
        y = sample_options.get("y")
        latents = ddim_invert(model, head, both, steps=steps, progress=False,
                              y=None if y is None else torch.cat([y, y]))
    z_a, z_b = latents.chunk(2)
    rows = [(1 - w) * z_a + w * z_b if mode == "linear" else slerp(z_a, z_b, float(w)) for w in weights]
    out = []
    for row in rows:
        gens = None if decode_seed is None else [torch.Generator(device=row.device).manual_seed(decode_seed + i)
                                                 for i in range(len(row))]
        out.append(sample(model, head, row, sampler=sampler, steps=steps, generator=gens,
                          **{"progress": False, **sample_options}))
    return torch.stack(out)


__all__ = ["COLOR_BASIS", "to_basis", "from_basis", "to_decoupled", "from_decoupled", "Inpainting",
           "InpaintedModel", "colorization", "slerp", "interpolate", "SDE_SAMPLERS", "inpaint", "colorize",
           "controlled_sample"]
