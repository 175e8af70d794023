"""Uniform and loss-aware timestep samplers (improved DDPM, section 3.3)."""
import numpy as np
import pytest
import torch

from guided_diffusion.diffusion import LossSecondMomentResampler, UniformSampler, create_timestep_sampler


def test_uniform_sampler_has_unit_importance_weights():
    t, w = UniformSampler(50).sample(1000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 50 and len(t.unique()) == 50
    assert torch.equal(w, torch.ones(1000))


def test_loss_aware_sampler_is_uniform_until_every_t_has_full_history():
    sampler = LossSecondMomentResampler(4, history_per_term=10)
    for _ in range(10):
        sampler.update_with_all_losses(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]))
    assert not sampler.warmed_up()
    np.testing.assert_array_equal(sampler.weights(), np.ones(4))
    sampler.update_with_all_losses(torch.arange(4).repeat(10), torch.full((40,), 1.0))
    assert sampler.warmed_up()


def test_loss_aware_weights_are_rms_of_recent_losses_mixed_with_uniform():
    sampler = LossSecondMomentResampler(3, history_per_term=2, uniform_prob=0.001)
    # t = 0 sees losses 1, 3 then 5 (only the last 2 are kept: 3, 5).
    sampler.update_with_all_losses([0, 0, 0, 1, 1, 2, 2], [1.0, 3.0, 5.0, 2.0, 2.0, 0.5, 0.5])
    rms = np.array([np.sqrt((9 + 25) / 2), 2.0, 0.5])
    expected = rms / rms.sum() * 0.999 + 0.001 / 3
    np.testing.assert_allclose(sampler.weights(), expected, rtol=1e-12)
    t, w = sampler.sample(20000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(t, minlength=3).double() / 20000
    np.testing.assert_allclose(freq.numpy(), expected, atol=0.015)
    # importance weights 1 / (T p_t): the weighted expectation of a per-t quantity is its uniform mean.
    np.testing.assert_allclose(w.numpy(), 1 / (3 * expected[t.numpy()]), rtol=1e-6)
    per_t = torch.tensor([1.0, 10.0, 100.0])
    assert (w * per_t[t]).mean().item() == pytest.approx(per_t.mean().item(), rel=0.05)


def test_non_finite_losses_are_ignored_and_state_round_trips():
    sampler = LossSecondMomentResampler(2, history_per_term=1)
    sampler.update_with_all_losses([0, 1, 1], [float("nan"), 2.0, float("inf")])
    assert sampler.loss_counts.tolist() == [0, 1]
    other = LossSecondMomentResampler(2, history_per_term=1)
    other.load_state_dict(sampler.state_dict())
    np.testing.assert_array_equal(other.loss_history, sampler.loss_history)
    np.testing.assert_array_equal(other.loss_counts, sampler.loss_counts)
    with pytest.raises(ValueError, match="history of shape"):
        LossSecondMomentResampler(3, history_per_term=1).load_state_dict(sampler.state_dict())


def test_bad_input():
    sampler = create_timestep_sampler("loss-second-moment", 5)
    with pytest.raises(ValueError, match="out of range"):
        sampler.update_with_all_losses([5], [1.0])
    with pytest.raises(ValueError, match="2 timesteps but 1 losses"):
        sampler.update_with_all_losses([1, 2], [1.0])
    with pytest.raises(ValueError, match="unknown timestep sampler 'importance'"):
        create_timestep_sampler("importance", 5)
