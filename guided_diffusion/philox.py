"""Philox-4x32-10, the counter-based generator of Salmon et al. (2011) that cuRAND and PyTorch's CUDA
generator are built on, written with integer tensor ops so a whole batch of independent streams is
drawn in one vectorised computation on any device.

A counter-based generator is a keyed bijection of the counter: output = Philox_key(counter). Stream i
(key k_i) and draw d give the same numbers whatever else is in the batch, with no state to carry and
no loop over the streams. Words are uint32 values held in int64 tensors (products of two words fit
64 bits; the wrap of a signed product keeps the low 64 bits, which is all a round needs).

Round r (Random123's ``philox4x32round``)::

    (hi0, lo0) = M0 * c0,  (hi1, lo1) = M1 * c2          (32 x 32 -> 64-bit products)
    c <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0),  then k <- k + (W0, W1) mod 2^32

Normals come from pairs of words by Box-Muller: u1 = (w0 + 1) / 2^32 in (0, 1], u2 = w1 / 2^32,
z = sqrt(-2 ln u1) (cos 2 pi u2, sin 2 pi u2), computed in float64.
"""
from __future__ import annotations

import math

import torch

MASK = 0xFFFFFFFF
M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
ROUNDS = 10


def _mulhilo(multiplier: int, word: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    product = word * multiplier
    return (product >> 32) & MASK, product & MASK


def philox4x32(counter: torch.Tensor, key: torch.Tensor, rounds: int = ROUNDS) -> torch.Tensor:
    """Philox-4x32-``rounds`` of ``counter`` (..., 4) under ``key`` (..., 2), both int64 words in [0, 2^32)
    (broadcast against each other); returns the (..., 4) output words."""
    c0, c1, c2, c3 = counter.long().unbind(-1)
    k0, k1 = key.long().unbind(-1)
    for round_index in range(rounds):
        if round_index:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack(torch.broadcast_tensors(c0, c1, c2, c3), dim=-1)


def key_words(seeds: list[int], device=None) -> torch.Tensor:
    """(B, 2) Philox keys from 64-bit seeds (low word first)."""
    return torch.tensor([[seed & MASK, (seed >> 32) & MASK] for seed in seeds], dtype=torch.long, device=device)


def words(keys: torch.Tensor, draw: int, count: int, tag: int = 0) -> torch.Tensor:
    """(B, 4 * ceil(count / 4)) words of draw ``draw`` of each stream: the counters are
    (block, draw, tag, 0) for block = 0, 1, ..."""
    if not 0 <= draw <= MASK:
        raise ValueError(f"draw {draw} outside the 32-bit counter")
    blocks = torch.arange(math.ceil(count / 4), dtype=torch.long, device=keys.device)
    counter = torch.stack([blocks, torch.full_like(blocks, draw), torch.full_like(blocks, tag),
                           torch.zeros_like(blocks)], dim=-1)
    return philox4x32(counter[None], keys[:, None]).reshape(len(keys), -1)


def normal(keys: torch.Tensor, draw: int, count: int) -> torch.Tensor:
    """(B, count) float64 standard normals of draw ``draw`` of each stream (Box-Muller on word pairs)."""
    pairs = words(keys, draw, count).double().reshape(len(keys), -1, 2)
    radius = torch.sqrt(-2.0 * torch.log((pairs[..., 0] + 1.0) / 2.0 ** 32))
    angle = (2.0 * math.pi / 2.0 ** 32) * pairs[..., 1]
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).reshape(len(keys), -1)[:, :count]


def below(keys: torch.Tensor, draw: int, high: int) -> torch.Tensor:
    """(B,) integers uniform on [0, high) from draw ``draw`` of each stream (64-bit words: bias < high / 2^64)."""
    if not 0 < high <= 2 ** 31:
        raise ValueError(f"high must be in (0, 2^31], got {high}")
    pair = words(keys, draw, 2, tag=1)
    # (hi * 2^32 + lo) mod high, without leaving int64: 2^32 mod high is a small constant.
    return ((pair[:, 0] % high) * (2 ** 32 % high) + pair[:, 1] % high) % high
