"""Two-process DDP (CPU, gloo, ``ddp_spawn``) of both training modules.

Each rank dumps its state at the end of training; the loss-aware timestep sampler, the EMA and
the weights must be identical on both ranks. (Never ``strategy="ddp"`` inside pytest: it would
re-execute the pytest command line on rank 1.)
"""
from __future__ import annotations

from datetime import timedelta

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy

from classifiers.module import NoisyClassifierModule
from tests.test_training import TINY_CLASSIFIER, TINY_DIFFUSION, tiny_data, tiny_diffusion_module


class DumpRankState(Callback):
    """Save every rank's module state (and timestep-sampler state) at the end of training."""

    def __init__(self, directory: str):
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        state = {"state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
                 "global_step": trainer.global_step, "world_size": trainer.world_size}
        sampler = getattr(pl_module, "timestep_sampler", None)
        if sampler is not None:
            state["sampler"] = sampler.state_dict()
        torch.save(state, f"{self.directory}/rank{trainer.global_rank}.pt")


def _fit_ddp(module, tmp_path, steps=3):
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(start_method="spawn",
                                                                           timeout=timedelta(seconds=60)),
                        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                        val_check_interval=steps, default_root_dir=tmp_path, callbacks=[DumpRankState(str(tmp_path))])
    trainer.fit(module, tiny_data(batch_size=4))
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_ddp_diffusion_module_keeps_sampler_and_ema_identical_across_ranks(tmp_path):
    rank0, rank1 = _fit_ddp(tiny_diffusion_module(timestep_sampler="loss-second-moment"), tmp_path)
    assert rank0["world_size"] == 2 and rank0["global_step"] == rank1["global_step"] == 3
    _assert_same(rank0["sampler"], rank1["sampler"])
    assert int(rank0["sampler"]["loss_counts"].sum()) == 3 * 4 * 2  # the (t, loss) pairs of both ranks
    _assert_same(rank0["state_dict"], rank1["state_dict"])  # weights and EMA
    assert int(rank0["state_dict"]["ema.num_updates"]) == 3


def test_ddp_classifier_module(tmp_path):
    module = NoisyClassifierModule(network=TINY_CLASSIFIER, diffusion=TINY_DIFFUSION)
    rank0, rank1 = _fit_ddp(module, tmp_path)
    assert rank0["global_step"] == rank1["global_step"] == 3
    _assert_same(rank0["state_dict"], rank1["state_dict"])
