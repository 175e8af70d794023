"""Lightning glue of a sampling run: ``Trainer.predict`` over shard indices, one shard per step.

Each rank takes shards r, r + W, ... (:meth:`SamplePlan.shards_of_rank`) that are not yet on disk,
samples each with per-sample generators and writes it atomically; after a barrier, rank 0 merges.
Lightning supplies devices, DDP, precision (autocast) and the progress bar; the sampling itself is
:func:`guided_diffusion.sampling.sample`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..sampling import Guidance, sample
from .conditions import ImageCondition
from ..images import to_uint8_nhwc
from .plan import SamplePlan
from .shards import complete_shards, merge_shards, write_shard


class ShardQueue(L.LightningDataModule):
    """The shards this rank still has to write (read at the start of the run, so a re-run resumes)."""

    def __init__(self, plan: SamplePlan, directory: str | os.PathLike):
        super().__init__()
        self.plan, self.directory = plan, Path(directory)

    def predict_dataloader(self) -> DataLoader:
        mine = self.plan.shards_of_rank(self.trainer.global_rank, self.trainer.world_size)
        done = complete_shards(self.directory, self.plan, mine, set_aside_bad=True)  # bad ones: renamed, redone
        return DataLoader([shard for shard in mine if shard not in done], batch_size=None, shuffle=False)


class ShardSampler(L.LightningModule):
    """Samples one shard per ``predict_step`` and writes it; rank 0 merges when all ranks are done.

    Args:
        model: the diffusion network (frozen).
        diffusion: the process it was trained with (the sampler respaces it).
        plan: which samples form which shard, their labels and seeds.
        directory: where shards and the merged file go.
        guidance: classifier or classifier-free guidance, or ``None``.
        sampler_options: ``sampler``, ``steps`` and sampler options (``eta``, ``clip_denoised``...).
    """

    def __init__(self, model: torch.nn.Module, diffusion, plan: SamplePlan, directory: str | os.PathLike,
                 guidance: Optional[Guidance], sampler_options: dict[str, Any],
                 condition: Optional[ImageCondition] = None):
        super().__init__()
        self.model = model
        # a classifier inside the guidance must follow the model to the device
        self.classifier = getattr(guidance, "classifier", None)
        self.diffusion, self.plan, self.directory = diffusion, plan, Path(directory)
        self.guidance, self.sampler_options, self.condition = guidance, sampler_options, condition
        self.merged: Optional[Path] = None

    def predict_step(self, shard, batch_idx: int) -> int:
        shard = int(shard)
        config = self.model.config
        labels = self.plan.labels(shard)
        if labels is not None:
            labels = labels.to(self.device)
        indices = self.plan.shard_indices(shard)
        generators = self.plan.generators(shard, self.device)
        guidance = self.guidance
        if self.condition is not None:  # inpainting / colorization: after the other guidance
            built = self.condition.build(indices, self.diffusion, self.device, generators)
            guidance = [built] if guidance is None else [guidance, built]
        shape = (len(indices), config.in_channels, config.image_size, config.image_size)
        images = sample(self.model, self.diffusion, shape, y=labels, guidance=guidance, generator=generators,
                        progress=False, **self.sampler_options)
        write_shard(self.directory, shard, to_uint8_nhwc(images.float()).cpu().numpy(),
                    None if labels is None else labels.cpu().numpy())
        return shard

    def on_predict_end(self) -> None:
        self.trainer.strategy.barrier("shards-written")
        if self.trainer.is_global_zero:
            self.merged = merge_shards(self.directory, self.plan)
        self.trainer.strategy.barrier("merged")
