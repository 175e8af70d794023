"""Philox-4x32-10 per-sample noise streams: the generator against Random123's known answers, the streams'
independence of their batch, their statistics, and ``gd sample --noise philox`` runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guided_diffusion import philox
from guided_diffusion.noise import PhiloxStreams, randn, resolve_noise, sample_noise, sample_seed
from guided_diffusion.sde.ncsn import ncsn_loss

# Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter (4 words), key (2), result (4).
KNOWN_ANSWERS = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def _words(text: str) -> torch.Tensor:
    return torch.tensor([int(word, 16) for word in text.split()], dtype=torch.long)


def test_philox_matches_the_random123_known_answers_one_at_a_time_and_broadcast():
    for counter, key, result in KNOWN_ANSWERS:
        assert torch.equal(philox.philox4x32(_words(counter), _words(key)), _words(result))
    counters = torch.stack([_words(c) for c, _, _ in KNOWN_ANSWERS])
    keys = torch.stack([_words(k) for _, k, _ in KNOWN_ANSWERS])
    assert torch.equal(philox.philox4x32(counters, keys), torch.stack([_words(r) for _, _, r in KNOWN_ANSWERS]))


def test_a_sample_s_noise_is_its_own_whatever_its_batch():
    """Row i is a function of sample i's seed and the draw number alone: a batch split, reordered or merged draws
    the same rows (as one torch.Generator per sample does), on every draw."""
    seeds = [sample_seed(7, i) for i in range(5)]
    whole = PhiloxStreams(seeds)
    parts = [PhiloxStreams(seeds[3:]), PhiloxStreams(seeds[1:3][::-1]), PhiloxStreams(seeds[:1])]
    for _ in range(3):
        full = randn((5, 3, 4, 5), whole)
        pieces = [randn((len(p), 3, 4, 5), p) for p in parts]
        assert torch.equal(full, torch.cat([pieces[2], pieces[1].flip(0), pieces[0]]))
    assert whole.draws == 3
    level = PhiloxStreams(seeds).randint(10)
    assert torch.equal(level[3:], PhiloxStreams(seeds[3:]).randint(10))


def test_philox_normals_are_standard_and_independent():
    """Mean, variance, tails and correlations of 4 x 25,000 normals against N(0, 1), at 5 sigma of the estimators."""
    streams = PhiloxStreams([sample_seed(0, i) for i in range(4)])
    first, second = randn((4, 25_000), streams, dtype=torch.float64), randn((4, 25_000), streams, dtype=torch.float64)
    z = first.reshape(-1)
    n = z.numel()
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z.abs() > 1.959964).double().mean() - 0.05) < 5 * math.sqrt(0.05 * 0.95 / n)
    assert abs((z ** 4).mean() - 3) < 5 * math.sqrt(96 / n)
    limit = 5 / math.sqrt(25_000)
    correlations = [torch.corrcoef(torch.stack([first[0], first[1]]))[0, 1],  # two samples
                    torch.corrcoef(torch.stack([first[0], second[0]]))[0, 1],  # two draws of one sample
                    torch.corrcoef(torch.stack([first[0, :-1], first[0, 1:]]))[0, 1],  # neighbours (Box-Muller pair)
                    torch.corrcoef(torch.stack([first[0, :-4], first[0, 4:]]))[0, 1]]  # next block
    assert all(abs(c) < limit for c in correlations), correlations


def test_philox_integers_are_uniform():
    levels = PhiloxStreams([sample_seed(1, i) for i in range(20_000)]).randint(7)
    counts = torch.bincount(levels, minlength=7).double()
    chi2 = float(((counts - 20_000 / 7) ** 2 / (20_000 / 7)).sum())
    assert levels.min() >= 0 and levels.max() < 7 and chi2 < 22.5  # chi^2_6 at p = 0.001


def test_auto_picks_philox_off_the_cpu_and_bad_kinds_fail():
    assert resolve_noise("auto", "cpu") == "generators" and resolve_noise("auto", "meta") == "philox"
    assert isinstance(sample_noise(0, [0, 1], "cpu"), list)
    assert isinstance(sample_noise(0, [0, 1], "cpu", kind="philox"), PhiloxStreams)
    with pytest.raises(ValueError, match="noise must be one of auto, generators, philox"):
        resolve_noise("curand", "cpu")
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        randn((2, 4), PhiloxStreams([1, 2, 3]))


def test_ncsn_loss_draws_its_levels_from_philox_streams_per_sample():
    x0 = torch.zeros(4, 2)

    def score(x, sigma):
        return -x / sigma[:, None] ** 2

    seeds = [sample_seed(3, i) for i in range(4)]
    whole = ncsn_loss(score, x0, [1.0, 0.5, 0.25, 0.1], PhiloxStreams(seeds))
    half = ncsn_loss(score, x0[2:], [1.0, 0.5, 0.25, 0.1], PhiloxStreams(seeds[2:]))
    assert torch.equal(whole["sigma_index"][2:], half["sigma_index"])
    assert np.isfinite(float(whole["loss"].mean()))
