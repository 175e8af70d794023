"""Skipped optimizer steps: a non-finite loss or the fp16 loss scaler's inf gradients leave the weights, the EMA
and the LR schedule where they were (as ADM's ``took_step``), counted once per optimizer step."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision

from tests.test_training import _poison, tiny_data, tiny_diffusion_module, trainer


class InfGradients(Callback):
    """Put an inf in one gradient after the backward of the given micro-batches (before the scaler unscales)."""

    def __init__(self, batches):
        self.batches, self.seen = set(batches), 0

    def on_after_backward(self, trainer, pl_module):
        if self.seen in self.batches:
            next(p for p in pl_module.model.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
        self.seen += 1


class RecordSchedule(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch


def test_fp16_scaler_skips_leave_ema_and_lr_schedule_and_are_counted_per_optimizer_step(tmp_path):
    module = tiny_diffusion_module(lr=1e-3, lr_warmup_steps=10, timestep_sampler="uniform")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    schedule = RecordSchedule()
    # 5 optimizer steps of 2 micro-batches; inf gradients in micro-batches 2 and 7 (optimizer steps 1 and 3)
    trainer(tmp_path, max_steps=5, accumulate_grad_batches=2,
            plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
            callbacks=[InfGradients({2, 7}), schedule]).fit(module, tiny_data())
    assert module.skipped.scaler == 2 and module.skipped.nonfinite == 0
    assert int(module.ema.num_updates) == 3  # the EMA followed the 3 applied updates
    assert schedule.last_epoch == 3  # so did the warm-up
    assert scaler.get_scale() == 2.0 ** 8  # the scaler itself halved twice
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_a_nonfinite_loss_in_one_micro_batch_skips_the_whole_window_once(tmp_path):
    module = tiny_diffusion_module(lr=1e-3, lr_warmup_steps=10, max_consecutive_nonfinite=3)
    schedule = RecordSchedule()
    _poison(module, nan_calls={2, 3, 5})  # both micro-batches of step 1, one of step 2
    trainer(tmp_path, max_steps=4, accumulate_grad_batches=2, callbacks=[schedule]).fit(module, tiny_data())
    assert module.nonfinite_steps == 2 and module.skipped.consecutive == 0
    assert int(module.ema.num_updates) == 2 and schedule.last_epoch == 2


def test_the_skip_counter_raises_after_too_many_in_a_row():
    from guided_diffusion.training.skipped_steps import SkippedSteps

    skipped = SkippedSteps(max_consecutive=2)
    skipped.scaler_found_inf = True
    assert skipped.end_step(0) is None and skipped.scaler == 1 and not skipped.last_applied
    skipped.loss_nonfinite = True
    assert "step 1" in skipped.end_step(1)
    assert skipped.end_step(2) is None and skipped.last_applied and skipped.consecutive == 0
    skipped.loss_nonfinite = True
    skipped.end_step(3)
    skipped.loss_nonfinite = True
    with pytest.raises(FloatingPointError, match=r"stopped at step 4: .* 2 consecutive steps \(3..4\)"):
        skipped.end_step(4)
