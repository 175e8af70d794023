"""Noise schedules and timestep respacing: the one place where beta_t comes from.

All arrays are float64 numpy; :class:`~guided_diffusion.diffusion.GaussianDiffusion` keeps them in
float64 and casts to float32 only when it looks a value up for a batch.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Literal, Sequence, get_args

import numpy as np

from .noise_levels import DiscreteNoiseLevels

ScheduleName = Literal["linear", "cosine"]
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)


def linear_beta_schedule(num_timesteps: int) -> np.ndarray:
    """DDPM's linear schedule, beta_1 = 1e-4 ... beta_T = 0.02 for T = 1000.

    For other T the end points are scaled by 1000 / T (Nichol & Dhariwal 2021) so that the total
    amount of noise, and hence abar_T, stays roughly the same.
    """
    _check_num_timesteps(num_timesteps)
    if num_timesteps <= 20:
        raise ValueError(f"the linear schedule needs more than 20 steps (its last beta, 0.02 * 1000 / T, must stay "
                         f"below 1), got {num_timesteps}; use the cosine schedule for short chains")
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def betas_for_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Discretise a continuous abar(t), t in [0, 1], into betas.

    beta_i = min(1 - abar((i + 1) / T) / abar(i / T), max_beta). Clipping at ``max_beta`` keeps the
    last steps from being singular where abar(t) -> 0.
    """
    _check_num_timesteps(num_timesteps)
    betas = []
    for i in range(num_timesteps):
        t1, t2 = i / num_timesteps, (i + 1) / num_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def cosine_beta_schedule(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved DDPM's cosine schedule: abar(t) = cos^2(((t + s) / (1 + s)) * pi / 2), betas <= 0.999."""
    return betas_for_alpha_bar(
        num_timesteps, lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2, max_beta=max_beta
    )


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Betas for a schedule known by name (``"linear"`` or ``"cosine"``)."""
    if name == "linear":
        return linear_beta_schedule(num_timesteps)
    if name == "cosine":
        return cosine_beta_schedule(num_timesteps)
    raise ValueError(f"unknown noise schedule {name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")


def check_betas(betas: Iterable[float]) -> np.ndarray:
    """Validate an explicit beta array: 1-d, finite, every beta in (0, 1]."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-d array, got shape {betas.shape}")
    if not np.all(np.isfinite(betas)) or not np.all((betas > 0) & (betas <= 1)):
        bad = betas[~(np.isfinite(betas) & (betas > 0) & (betas <= 1))]
        raise ValueError(f"every beta must lie in (0, 1]; got e.g. {bad[:3].tolist()}")
    return betas


def _check_num_timesteps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"the number of diffusion steps must be a positive integer, got {num_timesteps!r}")


# ----------------------------------------------------------------------------------------------
# Respacing (Nichol & Dhariwal 2021, section 4): sample with any subsequence of the T steps.


def space_timesteps(num_timesteps: int, spec: str | int | Sequence[int]) -> list[int]:
    """The sorted original timesteps kept by a respacing ``spec``.

    ``spec`` takes the forms users of guided-diffusion know:

    - ``"250"`` or ``250``: 250 steps, evenly strided over [0, T).
    - ``"10,15,20"`` (or a list of ints): split [0, T) into as many equal sections as there are
      counts, and take that many evenly strided steps from each section (first and last included).
    - ``"ddim25"``: the DDIM paper's integer stride, ``range(0, T, stride)`` with the stride that
      gives exactly 25 steps.
    - ``""`` (or ``None``): all T steps.

    - ``"quad20"``: 20 steps at t = (k / 19)^2 (T - 1), dense at low noise (fast ODE solvers).

    (``GaussianDiffusion.respace`` also takes ``"logsnr20"``: steps uniform in log-SNR, which needs
    the schedule and so is not handled here.)

    The maps are exactly those of the reference implementation (including Python's
    round-half-to-even on fractional strides).
    """
    _check_num_timesteps(num_timesteps)
    if spec is None or spec == "":
        return list(range(num_timesteps))
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("quad"):
            return quadratic_spaced_timesteps(num_timesteps, _parse_count(text[len("quad"):], spec))
        if text.startswith("ddim"):
            count = _parse_count(text[len("ddim"):], spec)
            if count > num_timesteps:
                raise ValueError(f"respacing {spec!r} asks for {count} steps but the diffusion has "
                                 f"only {num_timesteps}")
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == count:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"respacing {spec!r}: no integer stride gives exactly {count} of "
                             f"{num_timesteps} steps; use {count} (fractional stride) instead")
        section_counts = [_parse_count(part, spec) for part in text.split(",")]
    elif isinstance(spec, (int, np.integer)):
        section_counts = [int(spec)]
    else:
        section_counts = [int(c) for c in spec]
        if not section_counts or min(section_counts) < 1:
            raise ValueError(f"respacing {spec!r}: every section count must be a positive integer")

    size_per, extra = divmod(num_timesteps, len(section_counts))
    if size_per == 0:
        raise ValueError(f"respacing {spec!r} has {len(section_counts)} sections but the diffusion "
                         f"has only {num_timesteps} steps")
    kept: list[int] = []
    start = 0
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"respacing {spec!r}: section {i} has {size} steps, cannot take {count} "
                             f"(the diffusion has {num_timesteps} steps)")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def logsnr_spaced_timesteps(alphas_cumprod: np.ndarray, count: int) -> list[int]:
    """``count`` timesteps placed uniformly in log-SNR, lambda_t = log(sqrt(abar_t / (1 - abar_t))).

    DPM-Solver steps in lambda, so equal lambda steps spread its error evenly (for schedules whose
    lambda does not plunge at the end, as the clipped cosine schedule's does).
    """
    _check_count(count, len(alphas_cumprod), f"logsnr{count}")
    lam = DiscreteNoiseLevels(alphas_cumprod).log_snrs  # decreasing in t
    targets = np.linspace(lam[0], lam[-1], count)
    return _strictly_increasing(np.searchsorted(-lam, -targets).tolist(), len(alphas_cumprod))


def quadratic_spaced_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` timesteps at t_k = (k / (count - 1))^2 (T - 1): dense at low noise, where detail forms.

    DPM-Solver's "time_quadratic" placement (Lu et al. 2022); the ``dpm-solver`` sampler places a plain
    step count so (``steps=20`` is ``"quad20"``).
    """
    _check_count(count, num_timesteps, f"quad{count}")
    fractions = np.linspace(0.0, 1.0, count) ** 2
    return _strictly_increasing(np.rint(fractions * (num_timesteps - 1)).astype(int).tolist(), num_timesteps)


def _check_count(count: int, num_timesteps: int, spec: str) -> None:
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"respacing {spec!r} asks for {count} steps but the diffusion has {num_timesteps}")


def _strictly_increasing(kept: list[int], num_timesteps: int) -> list[int]:
    """Keep the first and last timestep; move colliding steps up (then down from the end) by one."""
    kept = [min(max(int(k), 0), num_timesteps - 1) for k in kept]
    kept[0] = 0
    for i in range(1, len(kept)):
        kept[i] = max(kept[i], kept[i - 1] + 1)
    kept[-1] = num_timesteps - 1
    for i in range(len(kept) - 2, -1, -1):
        kept[i] = min(kept[i], kept[i + 1] - 1)
    return kept


def _parse_count(text: str, spec: object) -> int:
    try:
        count = int(text.strip())
    except ValueError:
        raise ValueError(f"cannot parse respacing {spec!r}: expected e.g. '250', '10,15,20' or "
                         f"'ddim25'") from None
    if count < 1:
        raise ValueError(f"respacing {spec!r}: step counts must be positive")
    return count


def respaced_betas(alphas_cumprod: np.ndarray, kept_timesteps: Sequence[int]) -> np.ndarray:
    """Betas of the chain that visits only ``kept_timesteps``, recomputed from abar.

    beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}} (with abar before the first kept step = 1), so the
    respaced chain has exactly the same marginals q(x_t | x_0) at the kept steps.
    """
    betas = []
    last = 1.0
    for t in kept_timesteps:
        betas.append(1 - alphas_cumprod[t] / last)
        last = alphas_cumprod[t]
    return np.array(betas, dtype=np.float64)
