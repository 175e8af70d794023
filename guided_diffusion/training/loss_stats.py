"""Per-example statistics overall and per timestep quartile, as guided-diffusion logs them.

``loss_q0`` is the mean over examples with t in [0, T/4), ... ``loss_q3`` over [3T/4, T): the
reference's ``log_loss_dict``. Training logs the means of the current (all-gathered) batch;
validation accumulates :class:`QuartileMeans` (torchmetrics, synchronised across ranks).
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
from torch import nn
from torchmetrics import MeanMetric

NUM_QUARTILES = 4


def timestep_quartile(t: torch.Tensor, num_timesteps: int) -> torch.Tensor:
    """Quartile index 0..3 of each timestep."""
    return (NUM_QUARTILES * t.long()) // num_timesteps


def quartile_means(t: torch.Tensor, values: Mapping[str, torch.Tensor], num_timesteps: int) -> dict[str, float]:
    """``{name: mean, name_q0: mean over quartile 0, ...}`` of one batch (empty quartiles left out).

    One host synchronisation for all names.
    """
    quartile = timestep_quartile(t, num_timesteps)
    counts = torch.bincount(quartile, minlength=NUM_QUARTILES).float()
    rows = []
    for value in values.values():
        value = value.detach().float()
        sums = torch.zeros(NUM_QUARTILES, device=value.device).index_add_(0, quartile, value)
        rows.append(torch.cat([value.mean()[None], sums / counts.clamp(min=1)]))
    table, counts = torch.stack(rows).cpu().tolist(), counts.cpu().tolist()
    out = {}
    for name, (overall, *per_quartile) in zip(values, table):
        out[name] = overall
        out.update({f"{name}_q{q}": m for q, m in enumerate(per_quartile) if counts[q] > 0})
    return out


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, torch.Tensor]:
    """Per-example 0/1 "label among the top k logits" for each k (k capped at the class count)."""
    largest = min(max(ks), logits.shape[-1])
    top = logits.detach().topk(largest, dim=-1).indices == labels[:, None]
    return {f"acc@{k}": top[:, :min(k, largest)].any(dim=-1).float() for k in ks}


class QuartileMeans(nn.Module):
    """Running means of named per-example values, overall and per timestep quartile.

    A ``torchmetrics.MeanMetric`` per key (weighted by quartile membership, so an empty quartile
    costs nothing and computes to NaN, which :meth:`compute` leaves out); ``compute`` synchronises
    across ranks.

    Args:
        names: the value names (``"loss"``, ``"acc@1"``, ...).
        num_timesteps: T, for the quartile boundaries.
    """

    def __init__(self, names: Iterable[str], num_timesteps: int):
        super().__init__()
        self.names, self.num_timesteps = list(names), num_timesteps
        self.means = nn.ModuleDict({key: MeanMetric() for name in self.names for key in self._keys(name)})

    @staticmethod
    def _keys(name: str) -> list[str]:
        return [name] + [f"{name}_q{q}" for q in range(NUM_QUARTILES)]

    def update(self, t: torch.Tensor, values: Mapping[str, torch.Tensor]) -> None:
        quartile = timestep_quartile(t, self.num_timesteps)
        for name in self.names:
            value = values[name].detach().float()
            self.means[name].update(value)
            for q in range(NUM_QUARTILES):
                self.means[f"{name}_q{q}"].update(value, weight=(quartile == q).float())

    def compute(self) -> dict[str, float]:
        results = {key: float(metric.compute()) for key, metric in self.means.items()}
        return {key: value for key, value in results.items() if not math.isnan(value)}

    def reset(self) -> None:
        for metric in self.means.values():
            metric.reset()
