"""Which timesteps a training batch sees: uniform, or importance-sampled by loss (improved DDPM).

A sampler draws t ~ p_t and returns the importance weights 1 / (T p_t), so that the weighted loss
is an unbiased estimate of the uniform-t objective. The loss-aware sampler needs the losses of
*every* rank to stay identical across ranks: the training loop gathers (t, loss) pairs from all
ranks and feeds them to :meth:`TimestepSampler.update_with_all_losses` (in one process, the local
ones). Nothing here touches torch.distributed.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, Optional

import numpy as np
import torch


class TimestepSampler(ABC):
    """A distribution p_t over the T timesteps of a diffusion."""

    def __init__(self, num_timesteps: int):
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be positive, got {num_timesteps}")
        self.num_timesteps = num_timesteps

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Unnormalised, positive sampling weights, shape (T,)."""

    def sample(self, batch_size: int, device: torch.device | str = "cpu",
               generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch_size`` timesteps; returns (t, importance weights 1 / (T p_t))."""
        w = torch.as_tensor(self.weights(), dtype=torch.float64)
        p = w / w.sum()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        importance = 1.0 / (len(p) * p[t])
        return t.to(device), importance.float().to(device)

    def update_with_all_losses(self, ts: torch.Tensor | np.ndarray, losses: torch.Tensor | np.ndarray) -> None:
        """Feed the (timestep, loss) pairs gathered from *all* ranks, in the same order on every rank."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class UniformSampler(TimestepSampler):
    """p_t = 1 / T: L_simple's sampling; importance weights are all 1."""

    def weights(self) -> np.ndarray:
        return np.ones(self.num_timesteps, dtype=np.float64)


class LossSecondMomentResampler(TimestepSampler):
    """p_t proportional to sqrt(E[L_t^2]) over the last ``history_per_term`` losses at each t.

    Uniform until every t has a full history; then mixed with ``uniform_prob`` of the uniform
    distribution so that no timestep is starved (Nichol & Dhariwal 2021, section 3.3).
    """

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history_per_term < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"need history_per_term >= 1 and 0 <= uniform_prob <= 1, got "
                             f"{history_per_term}, {uniform_prob}")
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros((num_timesteps, history_per_term), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history_per_term).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up():
            return np.ones(self.num_timesteps, dtype=np.float64)
        w = np.sqrt(np.mean(self.loss_history ** 2, axis=-1))
        w /= w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / len(w)

    def update_with_all_losses(self, ts, losses) -> None:
        ts = np.asarray(torch.as_tensor(ts).detach().cpu(), dtype=np.int64).reshape(-1)
        losses = np.asarray(torch.as_tensor(losses).detach().float().cpu(), dtype=np.float64).reshape(-1)
        if ts.shape != losses.shape:
            raise ValueError(f"{ts.size} timesteps but {losses.size} losses")
        if ts.size and (ts.min() < 0 or ts.max() >= self.num_timesteps):
            raise ValueError(f"timestep out of range [0, {self.num_timesteps - 1}]: {ts.min()}..{ts.max()}")
        for t, loss in zip(ts, losses):
            if not np.isfinite(loss):
                continue  # a non-finite loss must not poison the sampling distribution
            if self.loss_counts[t] == self.history_per_term:
                self.loss_history[t, :-1] = self.loss_history[t, 1:]
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, self.loss_counts[t]] = loss
                self.loss_counts[t] += 1

    def state_dict(self) -> dict:
        return {"loss_history": torch.from_numpy(self.loss_history.copy()),
                "loss_counts": torch.from_numpy(self.loss_counts.copy())}

    def load_state_dict(self, state: dict) -> None:
        history = np.asarray(state["loss_history"], dtype=np.float64)
        if history.shape != self.loss_history.shape:
            raise ValueError(f"sampler state has history of shape {history.shape}, expected "
                             f"{self.loss_history.shape}")
        self.loss_history = history.copy()
        self.loss_counts = np.asarray(state["loss_counts"], dtype=np.int64).copy()


def create_timestep_sampler(name: Literal["uniform", "loss-second-moment"], num_timesteps: int) -> TimestepSampler:
    """A timestep sampler by the names the reference uses."""
    if name == "uniform":
        return UniformSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(num_timesteps)
    raise ValueError(f"unknown timestep sampler {name!r}; expected 'uniform' or 'loss-second-moment'")
