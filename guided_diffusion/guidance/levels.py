"""Where and how much a guidance acts: the scale, the step's noise level, intervals and scale schedules.

A sampling step is known to the guidance as a :class:`NoiseLevel` of host numbers (no device read):
the model timestep t, sigma = sigma_t / alpha_t and tau in [0, 1] (1 = pure noise). From it:

- an **interval** (Kynkaenniemi et al. 2024) guides only where ``lo <= t <= hi`` (or ``lo <= sigma <= hi``);
- a **scale schedule** (Wang et al. 2024) multiplies the scale by w(tau): ``constant`` w = 1, ``linear``
  w = 2 (1 - tau), ``cosine`` w = 1 + cos(pi tau) (both average 1 over tau in [0, 1] and grow as sampling
  proceeds), or any function of tau.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence


class GuidanceScale(float):
    """A guidance scale: a finite number >= 0.

    ``GuidanceScale("nan")`` raises ``ValueError`` with :func:`check_scale`'s message, so a bad value given on
    the command line is reported as exactly that.
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


@dataclass(frozen=True)
class NoiseLevel:
    """Where a sampling step is, as host numbers.

    Args:
        t: the model's timestep (original scale: 0..T-1 for a discrete model).
        sigma: sigma_t / alpha_t, the noise-to-signal ratio of x_t (EDM's sigma).
        tau: normalised time in [0, 1], 1 = pure noise (discrete: t / (T - 1); an SDE: its time / its end).
    """

    t: float
    sigma: float
    tau: float


IntervalVariable = Literal["t", "sigma"]
ScheduleName = Literal["constant", "linear", "cosine"]
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda tau: 1.0,
    "linear": lambda tau: 2.0 * (1.0 - tau),
    "cosine": lambda tau: 1.0 + math.cos(math.pi * tau),
}
Schedule = ScheduleName | Callable[[float], float]


@dataclass(frozen=True)
class GuidanceInterval:
    """The noise levels at which a guidance acts: ``lo <= level.t <= hi`` (or ``level.sigma``)."""

    lo: float
    hi: float
    variable: IntervalVariable = "t"

    def __post_init__(self):
        if self.variable not in ("t", "sigma"):
            raise ValueError(f"a guidance interval is in 't' or 'sigma', got {self.variable!r}")
        if not (math.isfinite(self.lo) and (math.isfinite(self.hi) or self.hi == math.inf)) or self.lo < 0:
            raise ValueError(f"guidance interval bounds must be finite and >= 0, got [{self.lo}, {self.hi}]")
        if self.lo > self.hi:
            raise ValueError(f"guidance interval [{self.lo}, {self.hi}] has lo > hi")

    def contains(self, level: NoiseLevel) -> bool:
        value = level.t if self.variable == "t" else level.sigma
        return self.lo <= value <= self.hi


def as_interval(interval: Optional[GuidanceInterval | Sequence[float]],
                variable: IntervalVariable = "t") -> Optional[GuidanceInterval]:
    """``None``, a :class:`GuidanceInterval`, or ``(lo, hi)`` in ``variable``."""
    if interval is None or isinstance(interval, GuidanceInterval):
        return interval
    lo, hi = (float(v) for v in interval)
    return GuidanceInterval(lo, hi, variable)


def parse_interval(text: Optional[str], what: str = "guidance interval") -> Optional[tuple[float, float]]:
    """``"lo,hi"`` (``inf`` allowed; ``none`` / empty: no interval) as a pair of floats."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    parts = [part.strip() for part in str(text).split(",")]
    try:
        lo, hi = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"{what} must be 'lo,hi' (numbers, 'inf' allowed), got {text!r}") from None
    if not (lo >= 0 and (math.isfinite(hi) or hi == math.inf) and math.isfinite(lo) and lo <= hi):
        raise ValueError(f"{what} {text!r}: need 0 <= lo <= hi")
    return lo, hi


def schedule_factor(schedule: Schedule, tau: float) -> float:
    """w(tau) of a scale schedule (a name of :data:`SCHEDULES` or a function of tau)."""
    factor = float(SCHEDULES[schedule](tau) if isinstance(schedule, str) else schedule(tau))
    if not math.isfinite(factor) or factor < 0:
        raise ValueError(f"the guidance schedule gave {factor} at tau = {tau}: it must be finite and >= 0")
    return factor


__all__ = ["GuidanceScale", "check_scale", "NoiseLevel", "IntervalVariable", "ScheduleName", "SCHEDULES", "Schedule",
           "GuidanceInterval", "as_interval", "parse_interval", "schedule_factor"]
