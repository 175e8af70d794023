"""The distributed loop of a sampling run, on Lightning Fabric: rank r samples batches r, r + W, r + 2W, ...

Rank 0 scans the run directory for the samples no intact shard holds yet and broadcasts them; they are cut into
batches of ``batch_size`` (:func:`.plan.batches`) and every rank samples its share, each batch with per-sample
noise streams, written atomically as the shard of its index range. After a barrier, rank 0 merges. The batch
size and the number of processes can change from one run to the next. Fabric supplies the devices, DDP and the
precision (autocast); the sampling itself is :func:`guided_diffusion.sampling.sample`.

A run has up to two :class:`Stage` s: the base model (images from noise) and, for a cascade, the upsampler
(ADM-U: images from the base images). The base images of a cascade are kept as their own shards under
``low_res/``, quantised to uint8 as a sample file holds them, and that is what the upsampler reads: a cascade
resumed after its base shard was written upsamples exactly the same input, and ``gd sample --upsampler`` equals
``gd sample`` followed by ``gd upsample`` image for image.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..guidance import Guidance, as_guidance
from ..images import from_uint8_nhwc, save_grid, to_uint8_nhwc
from ..launch import LaunchOptions, run
from ..noise import NOISE_STREAM, resolve_noise
from ..sampling import sample
from .conditions import ImageCondition
from .plan import SamplePlan, batches, batches_of_rank
from .shards import (RunLock, check_manifest, file_identities, merge_shards, read_samples, read_shard, scan,
                     write_shard)

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


@dataclass
class SamplingCost:
    """What the shards sampled by this process cost: network evaluations (rows through each network, so a
    classifier-free doubled batch counts twice) and sampling wall time (model loading and merging aside)."""

    samples: int = 0
    model_evaluations: int = 0
    model_gradient_evaluations: int = 0
    """Rows through the model kept for a backward pass (training-free guidance differentiates through it)."""
    classifier_evaluations: int = 0
    guide_model_evaluations: int = 0
    """Rows through an autoguidance guide model (a network of the guidance with the role ``guide_model``)."""
    seconds: float = 0.0

    def count(self, network: nn.Module, field: str, gradients: Optional[str] = None):
        """Count the rows ``network`` evaluates into ``field`` (and those evaluated with a graph for a backward pass
        into ``gradients`` as well); returns the hook's handle (``.remove()``)."""
        def hook(module, args, output):
            self._add(field, args[0].shape[0])
            if gradients is not None and isinstance(output, torch.Tensor) and output.requires_grad:
                self._add(gradients, args[0].shape[0])

        return network.register_forward_hook(hook)

    def _add(self, field: str, rows: int) -> None:
        setattr(self, field, getattr(self, field) + rows)

    def per_sample(self) -> dict[str, float]:
        """Model / classifier evaluations and seconds per sample (``{}`` if nothing was sampled)."""
        if not self.samples:
            return {}
        return {"model_evaluations": self.model_evaluations / self.samples,
                "classifier_evaluations": self.classifier_evaluations / self.samples,
                "model_gradient_evaluations": self.model_gradient_evaluations / self.samples,
                "guide_model_evaluations": self.guide_model_evaluations / self.samples,
                "seconds": self.seconds / self.samples}

    def describe(self) -> str:
        cost = self.per_sample()
        if not cost:
            return "nothing sampled (every shard was already written)"
        gradients = cost["model_gradient_evaluations"]
        guide = (f" ({gradients:g} with a backward pass)" if gradients else "") + (
            f", {cost['guide_model_evaluations']:g} guide-model" if cost["guide_model_evaluations"] else "")
        return (f"{self.samples} samples: {cost['model_evaluations']:g} model{guide} and "
                f"{cost['classifier_evaluations']:g} classifier evaluations and {1000 * cost['seconds']:.1f} ms per "
                "sample")


@dataclass
class ShardJob:
    """What a run samples and where it writes.

    Args:
        plan: which samples form the run, their labels and seeds.
        directory: where shards and the merged file go.
        base: the model that makes images from noise (``None``: the images to upsample are ``low_res``).
        upsampler: the super-resolution stage of a cascade (``None``: the base images are the output).
        low_res: uint8 NHWC images to upsample, one per sample (``gd upsample``; needs ``upsampler``).
        batch_size: samples per shard and per forward pass (may differ from the run's earlier batches).
    """

    plan: SamplePlan
    directory: Path
    base: Optional[Stage]
    upsampler: Optional[Stage] = None
    low_res: Optional[np.ndarray] = None
    batch_size: int = 25

    def __post_init__(self):
        self.directory = Path(self.directory)
        if (self.base is None) == (self.low_res is None) or (self.low_res is not None and self.upsampler is None):
            raise ValueError("a sampling run has a base model, or low-resolution images and an upsampler")

    @property
    def cascade(self) -> bool:
        return self.base is not None and self.upsampler is not None

    @property
    def stages(self) -> list[Stage]:
        return [stage for stage in (self.base, self.upsampler) if stage is not None]

    def guidance_networks(self) -> list[tuple[str, nn.Module]]:
        """``(role, network)`` of the networks the stages' guidance evaluates (they follow the run to its device and
        are counted as ``<role>_evaluations``)."""
        return [role for stage in self.stages for role in as_guidance(stage.guidance).network_roles()]

    def sample(self, indices: range, device: torch.device) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The uint8 NHWC images and the labels of samples ``indices`` (a cascade writes its base shard first)."""
        labels = self.plan.labels(indices)
        on_device = None if labels is None else labels.to(device)
        if self.upsampler is None:
            images = to_uint8_nhwc(self.base.images(self.plan, indices, on_device, device).float()).cpu().numpy()
        else:
            low_res = from_uint8_nhwc(self._low_res_images(indices, labels, on_device, device)).to(device)
            images = self.upsampler.images(self.plan, indices, on_device, device, low_res=low_res)
            images = to_uint8_nhwc(images.float()).cpu().numpy()
        return images, None if labels is None else labels.numpy()

    def _low_res_images(self, indices: range, labels: Optional[torch.Tensor], on_device, device) -> np.ndarray:
        """The upsampler's input: the given images, or the base samples (kept from an earlier run, else sampled)."""
        if self.low_res is not None:
            return self.low_res[indices.start:indices.stop]
        directory = self.directory / LOW_RES_DIRECTORY
        # base shards of an interrupted run, checked (bad ones set aside) when the run started: reused
        kept = read_samples(directory, self.plan, indices, check=False)
        if kept is not None:
            return kept
        images = to_uint8_nhwc(self.base.images(self.plan, indices, on_device, device).float()).cpu().numpy()
        write_shard(directory, indices, images, None if labels is None else labels.numpy())
        return images

    def missing(self) -> list[tuple[int, int]]:
        """The index ranges no intact shard holds (bad shards are set aside, a cascade's base shards too)."""
        if (self.directory / LOW_RES_DIRECTORY).is_dir():
            scan(self.directory / LOW_RES_DIRECTORY, self.plan, set_aside_bad=True)
        coverage = scan(self.directory, self.plan, set_aside_bad=True)
        return [(span.start, span.stop) for span in coverage.missing]


@dataclass
class SampleResult:
    """Where a run's outputs are (``None`` on ranks other than 0; a plain dataclass: ``ddp_spawn`` copies rank 0's
    result back to the launching process)."""

    samples: Optional[Path]
    grid: Optional[Path]
    seconds: float
    low_res: Optional[Path] = None
    """The base model's samples of a cascade (``low_res/samples_*.npz``)."""
    cost: Optional[SamplingCost] = None
    """What the samples made by this call cost (rank 0's shards)."""
    settings: Optional[dict[str, Any]] = None
    """The run's identity as ``run.json`` holds it (with the content hashes of its files; rank 0)."""


def run_shards(job: ShardJob, settings: dict[str, Any], banner: str, launch: LaunchOptions, *,
               files: Mapping[str, Optional[str]], grid: bool, progress: bool, started: float,
               command: str) -> SampleResult:
    """Sample the shards of ``job`` still missing on the processes of ``launch``, then merge them.

    Rank 0 first takes the directory's lock, then checks the run's identity (``settings`` and the content hash of
    each of ``files``, ``name -> path``) against ``run.json``: nothing is written before the lock is held."""
    return run(launch, _run_on_rank, job, settings, dict(files), banner, grid, progress, started, command)


def _run_on_rank(fabric, job: ShardJob, settings: dict[str, Any], files: dict[str, Optional[str]], banner: str,
                 grid: bool, progress: bool, started: float, command: str) -> SampleResult:
    rank = fabric.global_rank
    if settings.get("noise") == "auto":  # the identity holds the kind drawn on this run's device
        settings = {**settings, "noise": resolve_noise("auto", fabric.device)}
    cost = SamplingCost()
    hooks = []
    for stage in job.stages:
        fabric.strategy.precision.convert_module(stage.network)
        hooks.append(cost.count(fabric.to_device(stage.network), "model_evaluations", "model_gradient_evaluations"))
    for role, network in job.guidance_networks():
        fabric.strategy.precision.convert_module(network)
        hooks.append(cost.count(fabric.to_device(network), f"{role}_evaluations"))
    lock, status = RunLock(job.directory), None
    if rank == 0:  # the ranks learn rank 0's verdict, so a refused run ends on every rank instead of hanging
        try:
            lock.acquire()
            settings = {**settings, **file_identities(job.directory, **files)}
            check_manifest(job.directory, settings)
            print(f"{command}: {banner}")
            status = ("ok", job.missing())
        except Exception as error:  # a refused run, a disk that is full...: every rank ends with it
            lock.release()
            status = ("error", error)
    status = fabric.broadcast(status, src=0)
    if status[0] == "error":
        for hook in hooks:
            hook.remove()
        raise status[1]
    missing = status[1]
    try:
        result = _sample_and_merge(fabric, job, missing, hooks, cost, grid, progress, started, command)
        result.settings = settings if rank == 0 else None
        return result
    finally:
        lock.release()


def _sample_and_merge(fabric, job: ShardJob, missing, hooks, cost: SamplingCost, grid: bool, progress: bool,
                      started: float, command: str) -> SampleResult:
    rank, world = fabric.global_rank, fabric.world_size
    work = batches([range(start, stop) for start, stop in missing], job.batch_size)
    if rank == 0:
        present = job.plan.num_samples - work.num_samples
        print(f"{command}: {present} of {job.plan.num_samples} samples already written, sampling "
              f"{job.plan.num_samples - present} in {len(work)} batches of up to {job.batch_size}")
    try:
        mine = batches_of_rank(work, rank, world)
        for indices in tqdm(mine, desc=command, total=len(range(rank, len(work), world)),
                            disable=not progress or rank != 0):
            begun = time.perf_counter()
            with torch.no_grad(), fabric.autocast():  # guidance differentiates w.r.t. x under enable_grad
                images, labels = job.sample(indices, fabric.device)
            cost.samples += len(images)
            cost.seconds += time.perf_counter() - begun  # the images are on the host: no pending work
            write_shard(job.directory, indices, images, labels)
    finally:
        for hook in hooks:
            hook.remove()
    fabric.barrier()
    if rank != 0:
        return SampleResult(None, None, time.perf_counter() - started)
    merged = merge_shards(job.directory, job.plan)
    low_res = merge_shards(job.directory / LOW_RES_DIRECTORY, job.plan) if job.cascade else None
    grid_path = None
    if grid:
        images, _ = read_shard(merged)
        grid_path = save_grid(images[:100], job.directory / "grid.png")
    seconds = time.perf_counter() - started
    print(f"cost: {cost.describe()}")
    print(f"wrote {merged}" + (f" (base samples: {low_res})" if low_res else "")
          + (f" and {grid_path}" if grid_path else "") + f" in {seconds:.1f} s")
    return SampleResult(merged, grid_path, seconds, low_res, cost)


__all__ = ["LOW_RES_DIRECTORY", "Stage", "SamplingCost", "ShardJob", "SampleResult", "run_shards"]
