"""Lightning glue of a sampling run: ``Trainer.predict`` over batches of sample indices, one shard per step.

Rank 0 scans the run directory for the samples no intact shard holds yet and broadcasts them; they are
cut into batches of ``batch_size`` (:func:`.plan.batches`) and rank r takes batches r, r + W, ...; each is
sampled with per-sample noise streams and written atomically as the shard of its index range. After a
barrier, rank 0 merges. The batch size and the number of processes can change from one run to the next.
Lightning supplies devices, DDP, precision (autocast) and the progress bar; the sampling itself is
:func:`guided_diffusion.sampling.sample`.

A run has up to two :class:`Stage` s: the base model (images from noise) and, for a cascade, the
upsampler (ADM-U: images from the base images). The base images of a cascade are kept as their own
shards under ``low_res/``, quantised to uint8 as a sample file holds them, and that is what the
upsampler reads: a cascade resumed after its base shard was written upsamples exactly the same input,
and ``gd sample --upsampler`` equals ``gd sample`` followed by ``gd upsample`` image for image.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..images import from_uint8_nhwc, save_grid, to_uint8_nhwc
from ..sampler_protocol import NOISE_STREAM, resolve_noise
from ..guidance import as_guidance
from ..sampling import Guidance, sample
from .conditions import ImageCondition
from .plan import SamplePlan, batches, batches_of_rank
from .shards import check_manifest, merge_shards, read_samples, read_shard, scan, write_shard

#: Sub-directory of a cascade run that holds the base model's (low-resolution) shards and merged ``.npz``.
LOW_RES_DIRECTORY = "low_res"


@dataclass
class Stage:
    """One diffusion model of a run and how it samples.

    Args:
        network: the (frozen) network; a super-resolution one reads ``low_res`` images.
        diffusion: the process it was trained with (the sampler respaces it).
        options: ``sampler``, ``steps`` and sampler options (``eta``, ``clip_denoised``...).
        guidance: classifier or classifier-free guidance, or ``None``.
        condition: inpainting / colorization (applied after ``guidance``).
        stream: the SeedSequence stream of the stage's noise (the upsampler's differs from the base's).
    """

    network: nn.Module
    diffusion: Any
    options: dict[str, Any]
    guidance: Optional[Guidance] = None
    condition: Optional[ImageCondition] = None
    stream: int = NOISE_STREAM

    def images(self, plan: SamplePlan, indices: range, labels: Optional[torch.Tensor], device: torch.device,
               low_res: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The images of samples ``indices`` in [-1, 1], NCHW (``low_res``: the super-resolution input, [-1, 1])."""
        generators = plan.generators(indices, device, self.stream)
        guidance = self.guidance
        if self.condition is not None:
            built = self.condition.build(indices, self.diffusion, device, generators)
            guidance = [built] if guidance is None else [guidance, built]
        config = self.network.config
        shape = (len(indices), config.in_channels, config.image_size, config.image_size)
        extra = {} if low_res is None else {"model_kwargs": {"low_res": low_res}}
        return sample(self.network, self.diffusion, shape, y=labels, guidance=guidance, generator=generators,
                      progress=False, **self.options, **extra)


class ShardQueue(L.LightningDataModule):
    """The batches of samples this rank still has to write (rank 0 scans the directory at the start of the run,
    so a re-run resumes, and broadcasts what is missing, so every rank cuts the same batches)."""

    def __init__(self, plan: SamplePlan, directory: str | os.PathLike, batch_size: int, command: str = "gd sample"):
        super().__init__()
        self.plan, self.directory, self.batch_size, self.command = plan, Path(directory), batch_size, command

    def predict_dataloader(self) -> DataLoader:
        missing = None
        if self.trainer.is_global_zero:
            if (self.directory / LOW_RES_DIRECTORY).is_dir():  # a cascade's bad base shards: renamed, redone
                scan(self.directory / LOW_RES_DIRECTORY, self.plan, set_aside_bad=True)
            coverage = scan(self.directory, self.plan, set_aside_bad=True)  # bad shards: renamed, redone
            missing = [(span.start, span.stop) for span in coverage.missing]
        missing = self.trainer.strategy.broadcast(missing, src=0)
        work = batches([range(start, stop) for start, stop in missing], self.batch_size)
        if self.trainer.is_global_zero:
            present = self.plan.num_samples - sum(len(indices) for indices in work)
            print(f"{self.command}: {present} of {self.plan.num_samples} samples already written, sampling "
                  f"{self.plan.num_samples - present} in {len(work)} batches of up to {self.batch_size}")
        mine = batches_of_rank(work, self.trainer.global_rank, self.trainer.world_size)
        # a rank with nothing to do still runs one (empty) step: Lightning skips the hooks of an empty
        # loader, and the barrier in on_predict_end must be reached by every rank
        items = [(indices.start, indices.stop) for indices in mine] or [(0, 0)]
        return DataLoader(items, batch_size=None, shuffle=False)


class ShardSampler(L.LightningModule):
    """Samples one shard per ``predict_step`` and writes it; rank 0 merges when all ranks are done.

    Args:
        plan: which samples form which shard, their labels and seeds.
        directory: where shards and the merged file go.
        base: the model that makes images from noise (``None``: the images to upsample are ``low_res``).
        upsampler: the super-resolution stage of a cascade (``None``: the base images are the output).
        low_res: uint8 NHWC images to upsample, one per sample (``gd upsample``; needs ``upsampler``).
        batch_size: samples per shard and per forward pass (may differ from the run's earlier batches).
    """

    def __init__(self, plan: SamplePlan, directory: str | os.PathLike, base: Optional[Stage],
                 upsampler: Optional[Stage] = None, low_res: Optional[np.ndarray] = None, batch_size: int = 25):
        super().__init__()
        if (base is None) == (low_res is None) or (low_res is not None and upsampler is None):
            raise ValueError("a sampling run has a base model, or low-resolution images and an upsampler")
        self.base, self.upsampler, self.low_res = base, upsampler, low_res
        # the networks (and a classifier inside a guidance) must follow the module to the device
        stages = [stage for stage in (base, upsampler) if stage is not None]
        classifiers = [network for stage in stages for network in as_guidance(stage.guidance).networks()]
        self.networks = nn.ModuleList([stage.network for stage in stages] + classifiers)
        self.cost = SamplingCost()
        for stage in stages:
            self.cost.count(stage.network, "model_evaluations")
        for network in classifiers:
            self.cost.count(network, "classifier_evaluations")
        self.plan, self.directory, self.batch_size = plan, Path(directory), batch_size
        self.merged: Optional[Path] = None
        self.merged_low_res: Optional[Path] = None

    @property
    def cascade(self) -> bool:
        return self.base is not None and self.upsampler is not None

    def predict_step(self, batch, batch_idx: int) -> tuple[int, int]:
        indices = range(int(batch[0]), int(batch[1]))
        if not indices:
            return indices.start, indices.stop  # this rank's share of the work is empty
        started = time.perf_counter()
        labels = self.plan.labels(indices)
        on_device = None if labels is None else labels.to(self.device)
        if self.upsampler is None:
            images = to_uint8_nhwc(self.base.images(self.plan, indices, on_device, self.device).float()).cpu().numpy()
        else:
            low_res = from_uint8_nhwc(self._low_res_images(indices, labels, on_device)).to(self.device)
            images = self.upsampler.images(self.plan, indices, on_device, self.device, low_res=low_res)
            images = to_uint8_nhwc(images.float()).cpu().numpy()
        self.cost.samples += len(images)
        self.cost.seconds += time.perf_counter() - started  # the images are on the host: no pending work
        write_shard(self.directory, indices, images, None if labels is None else labels.numpy())
        return indices.start, indices.stop

    def _low_res_images(self, indices: range, labels: Optional[torch.Tensor], on_device) -> np.ndarray:
        """The upsampler's input: the given images, or the base samples (kept from an earlier run, else sampled)."""
        if self.low_res is not None:
            return self.low_res[indices.start:indices.stop]
        directory = self.directory / LOW_RES_DIRECTORY
        # base shards of an interrupted run, checked (bad ones set aside) when the run started: reused
        kept = read_samples(directory, self.plan, indices, check=False)
        if kept is not None:
            return kept
        images = to_uint8_nhwc(self.base.images(self.plan, indices, on_device, self.device).float()).cpu().numpy()
        write_shard(directory, indices, images, None if labels is None else labels.numpy())
        return images

    def on_predict_end(self) -> None:
        self.trainer.strategy.barrier("shards-written")
        if self.trainer.is_global_zero:
            if self.cascade:
                self.merged_low_res = merge_shards(self.directory / LOW_RES_DIRECTORY, self.plan)
            self.merged = merge_shards(self.directory, self.plan)
        self.trainer.strategy.barrier("merged")


@dataclass
class SamplingCost:
    """What the shards sampled by this process cost: network evaluations (rows through each network, so a
    classifier-free doubled batch counts twice) and sampling wall time (model loading and merging aside)."""

    samples: int = 0
    model_evaluations: int = 0
    classifier_evaluations: int = 0
    seconds: float = 0.0

    def count(self, network: nn.Module, field: str) -> None:
        network.register_forward_hook(lambda module, args, output: self._add(field, args[0].shape[0]))

    def _add(self, field: str, rows: int) -> None:
        setattr(self, field, getattr(self, field) + rows)

    def per_sample(self) -> dict[str, float]:
        """Model / classifier evaluations and seconds per sample (``{}`` if nothing was sampled)."""
        if not self.samples:
            return {}
        return {"model_evaluations": self.model_evaluations / self.samples,
                "classifier_evaluations": self.classifier_evaluations / self.samples,
                "seconds": self.seconds / self.samples}

    def describe(self) -> str:
        cost = self.per_sample()
        if not cost:
            return "nothing sampled (every shard was already written)"
        return (f"{self.samples} samples: {cost['model_evaluations']:g} model and {cost['classifier_evaluations']:g} "
                f"classifier evaluations and {1000 * cost['seconds']:.1f} ms per sample")


@dataclass(frozen=True)
class SampleResult:
    """Where a run's outputs are (``None`` on ranks other than 0)."""

    samples: Optional[Path]
    grid: Optional[Path]
    seconds: float
    low_res: Optional[Path] = None
    """The base model's samples of a cascade (``low_res/samples_*.npz``)."""
    cost: Optional[SamplingCost] = None
    """What the samples made by this call cost (rank 0's shards)."""


def run_shards(module: ShardSampler, settings: dict[str, Any], banner: str, *, accelerator: str, devices: int,
               num_nodes: int, strategy: str, timeout_minutes: float, precision: str, grid: bool, progress: bool,
               started: float, command: str) -> SampleResult:
    """Run ``module`` over the shards still missing (checking the manifest ``settings`` first) and merge them."""
    output = module.directory
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=_strategy(strategy, devices * num_nodes, timeout_minutes), precision=precision,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=progress, inference_mode=False,  # guidance differentiates w.r.t. x
                        use_distributed_sampler=False, default_root_dir=output)
    if settings.get("noise") == "auto":  # the identity holds the kind drawn on this run's device
        settings = {**settings, "noise": resolve_noise("auto", trainer.strategy.root_device)}
    if trainer.is_global_zero:
        check_manifest(output, settings)
        print(f"{command}: {banner}")
    trainer.strategy.barrier("manifest")
    trainer.predict(module, datamodule=ShardQueue(module.plan, output, module.batch_size, command),
                    return_predictions=False)
    if not trainer.is_global_zero:
        return SampleResult(None, None, time.perf_counter() - started)
    merged = module.merged or merge_shards(output, module.plan)  # ddp_spawn: the merge happened in a worker
    low_res = None
    if module.cascade:
        low_res = module.merged_low_res or merge_shards(output / LOW_RES_DIRECTORY, module.plan)
    grid_path = None
    if grid:
        images, _ = read_shard(merged)
        grid_path = save_grid(images[:100], output / "grid.png")
    seconds = time.perf_counter() - started
    print(f"cost: {module.cost.describe()}")
    print(f"wrote {merged}" + (f" (base samples: {low_res})" if low_res else "")
          + (f" and {grid_path}" if grid_path else "") + f" in {seconds:.1f} s")
    return SampleResult(merged, grid_path, seconds, low_res, module.cost)


def _strategy(name: str, world_size: int, timeout_minutes: float):
    if name == "auto" and world_size <= 1:
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    start_method = "spawn" if name == "ddp_spawn" else "popen"
    return DDPStrategy(start_method=start_method, timeout=timedelta(minutes=timeout_minutes))
