"""``gd upsample``: the super-resolution stage of a cascade on samples made elsewhere (an ADM ``.npz``).

As guided-diffusion's ``super_res_sample.py`` (``--base_samples``): image i of the input (and its
label ``arr_1[i]``, if any) is upsampled with noise seeded by ``(seed, i)`` only; the run is sharded
and resumable like ``gd sample`` and writes the same files. ``gd sample --upsampler`` with the same
seed makes the same images from its own base samples.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..checkpoints import load_upsampler
from ..generation.conditions import load_low_res
from ..generation.pairing import check_upsampler
from ..generation.plan import SamplePlan
from ..generation.request import UpsampleRequest
from ..generation.runner import SampleResult, ShardJob, run_shards
from ..generation.shards import check_merge_fits
from ..nets import apply_fast_paths
from ..torch_files import check_torch_file
from .command import Command
from .sample import check_run_directory, log_run, upsampler_stage_of


def run_upsample(request: UpsampleRequest) -> SampleResult:
    """Upsample the images of an ADM sample ``.npz`` with a super-resolution model (ADM-U)."""
    started = time.perf_counter()
    output, networks, plan_options, launch = request.output.output, request.networks, request.plan, request.launch
    check_run_directory(request.output)
    launch.check_available()
    check_torch_file(request.upsampler, "upsampler checkpoint")
    model = load_upsampler(request.upsampler, networks.preset, ema=networks.ema)
    config = model.config
    images, labels = load_low_res(request.low_res, config.low_res_size, config.in_channels)
    num_samples = plan_options.num_samples
    if num_samples is not None:
        if num_samples > len(images):
            raise ValueError(f"num_samples {num_samples} but {request.low_res} holds {len(images)} images")
        images, labels = images[:num_samples], None if labels is None else labels[:num_samples]
    num_classes = None if labels is None else int(labels.max()) + 1
    if labels is not None and labels.min() < 0:
        raise ValueError(f"{request.low_res}: arr_1 holds negative labels")
    check_upsampler(model, config.low_res_size, config.in_channels, num_classes, f"the images of {request.low_res}")
    if model.num_classes is not None:
        num_classes = model.num_classes
    check_merge_fits(len(images), (config.image_size, config.image_size, config.in_channels))
    plan = SamplePlan(len(images), plan_options.seed, num_classes,
                      "all" if labels is None else tuple(int(label) for label in labels), plan_options.noise)
    stage = upsampler_stage_of(model, request.sampler)
    apply_fast_paths(stage.network, launch.compile, launch.channels_last)
    sampler = request.sampler
    settings = dict(preset=networks.preset, ema=networks.ema, sampler=sampler.sampler, steps=sampler.resolved_steps,
                    eta=sampler.eta, clip_denoised=sampler.clip_denoised, precision=launch.resolved_precision,
                    seed=plan_options.seed, noise=plan_options.noise,
                    **({"order": sampler.order} if sampler.order is not None else {}))
    job = ShardJob(plan, output, None, stage, low_res=np.ascontiguousarray(images), batch_size=plan_options.batch_size)
    banner = (f"{len(images)} images of {request.low_res} upsampled {config.low_res_size} -> {config.image_size} px "
              f"by {model.source}; {sampler.sampler} {sampler.resolved_steps}; into {output}")
    inputs = dict(low_res=request.low_res, upsampler=request.upsampler)
    result = run_shards(job, settings, banner, launch, files=inputs, grid=request.output.grid,
                        progress=request.output.progress, started=started, command="gd upsample")
    log_run(request.tracking, "upsample", result, inputs,
            dict(num_samples=len(images), batch_size=plan_options.batch_size, devices=launch.devices,
                 num_nodes=launch.num_nodes))
    return result


COMMAND = Command("upsample", "upsample the images of a sample .npz with a super-resolution model (ADM-U)",
                  UpsampleRequest, run_upsample,
                  skip=frozenset({"networks.classifier", "networks.classifier_preset", "networks.model_flags",
                                  "networks.classifier_flags", "plan.classes"}))


def upsample(low_res: str, upsampler: str, output: str = "outputs/upsampled", **options: Any) -> SampleResult:
    """``gd upsample`` from Python: ``upsample("samples.npz", "upsampler.ckpt", "out", seed=3)``; ``options`` are
    the command's options by name."""
    return COMMAND(low_res, upsampler, output=output, **options)


__all__ = ["COMMAND", "run_upsample", "upsample"]
