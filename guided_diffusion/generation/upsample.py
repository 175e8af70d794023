"""``gd upsample``: the super-resolution stage of a cascade on samples made elsewhere (an ADM ``.npz``).

As guided-diffusion's ``super_res_sample.py`` (``--base_samples``): image i of the input (and its
label ``arr_1[i]``, if any) is upsampled with noise seeded by ``(seed, i)`` only; the run is sharded
and resumable like ``gd sample`` and writes the same files. ``gd sample --upsampler`` with the same
seed makes the same images from its own base samples.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from ..atomic import check_output_directory
from ..checkpoints import load_upsampler
from ..nets import apply_fast_paths
from ..sampler_protocol import NoiseKind
from ..sampling import SamplerName
from ..torch_files import check_torch_file
from ..cli_types import WandbMode
from ..tracking import Tracking
from .command import Precision, Strategy, file_identities, log_run, sampler_options, upsampler_stage_of
from .conditions import load_low_res
from .pairing import check_upsampler
from .plan import SamplePlan


def upsample(low_res: str, upsampler: str, output: str = "outputs/upsampled", *, preset: Optional[str] = None,
             sampler: SamplerName = "ddim", steps: Optional[str] = None, eta: float = 0.0,
             clip_denoised: bool = True, num_samples: Optional[int] = None, batch_size: int = 25, seed: int = 0,
             noise: NoiseKind = "auto", ema: bool = True, precision: Precision = "32-true", accelerator: str = "auto",
             devices: int = 1,
             num_nodes: int = 1, strategy: Strategy = "auto", timeout_minutes: float = 30.0,
             compile: bool = False, channels_last: bool = False, grid: bool = True, progress: bool = True,
             wandb_project: Optional[str] = None, wandb_mode: WandbMode = "offline", log_artifacts: bool = False):
    """Upsample the images of an ADM sample ``.npz`` with a super-resolution model (ADM-U).

    Args:
        low_res: ``.npz`` with ``arr_0`` uint8 NHWC images of the upsampler's low-res size and, for a
            class-conditional upsampler, ``arr_1`` labels (``gd sample`` writes this layout).
        upsampler: the super-resolution model: this project's ``.ckpt`` or a released OpenAI ``.pt``.
        output: directory of the run (shards, ``run.json``, the merged ``.npz``, ``grid.png``).
        preset: network preset of an OpenAI ``.pt`` (default: detected from its keys).
        sampler: ``ddim``, ``ddpm``, ``dpm-solver``, or a score-SDE sampler.
        steps: respacing (default: ``ddim25`` for ddim, ``250`` for ddpm, 20 for dpm-solver).
        eta: DDIM eta (0 = deterministic).
        clip_denoised: clip predicted x_0 to [-1, 1] at every step.
        num_samples: upsample the first N images (default: all).
        batch_size: samples per shard and per forward pass.
        seed: image i's noise depends only on (seed, i).
        noise: per-sample noise streams (``generators``, ``philox`` or ``auto``, as ``gd sample --noise``).
        ema: use the EMA weights of a ``.ckpt``.
        precision: Lightning precision.
        accelerator: ``cpu``, ``gpu``, ``auto``...
        devices: processes per node (DDP when > 1).
        num_nodes: nodes of a multi-node run.
        strategy: ``auto`` (DDP when several devices), ``ddp`` or ``ddp_spawn``.
        timeout_minutes: DDP collective timeout.
        compile: ``torch.compile`` the upsampler (as ``gd sample --compile``).
        channels_last: NHWC memory order for the convolutions.
        grid: write ``grid.png`` of the first samples.
        progress: show the progress bar.
        wandb_project: log the run to this W&B project (as ``gd sample --wandb_project``).
        wandb_mode: ``offline``, ``online`` or ``disabled``.
        log_artifacts: also log the merged ``.npz`` and ``run.json`` as a ``samples`` artifact.
    """
    started = time.perf_counter()
    tracking = Tracking(wandb_project, wandb_mode, log_artifacts)
    options = sampler_options(sampler, steps, eta, clip_denoised)
    if batch_size < 1 or (num_samples is not None and num_samples < 1):
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    check_output_directory(output)
    check_torch_file(upsampler, "upsampler checkpoint")
    model = load_upsampler(upsampler, preset, ema=ema)
    config = model.config
    images, labels = load_low_res(low_res, config.low_res_size, config.in_channels)
    if num_samples is not None:
        if num_samples > len(images):
            raise ValueError(f"num_samples {num_samples} but {low_res} holds {len(images)} images")
        images, labels = images[:num_samples], None if labels is None else labels[:num_samples]
    num_classes = None if labels is None else int(labels.max()) + 1
    if labels is not None and labels.min() < 0:
        raise ValueError(f"{low_res}: arr_1 holds negative labels")
    check_upsampler(model, config.low_res_size, config.in_channels, num_classes, f"the images of {low_res}")
    if model.num_classes is not None:
        num_classes = model.num_classes
    plan = SamplePlan(len(images), seed, num_classes,
                      "all" if labels is None else tuple(int(label) for label in labels), noise)
    stage = upsampler_stage_of(model, options)
    apply_fast_paths(stage.network, compile, channels_last)
    settings = dict(preset=preset, ema=ema, sampler=sampler, steps=str(options["steps"]), eta=eta,
                    clip_denoised=clip_denoised, precision=precision, seed=seed, noise=noise,
                    **file_identities(output, low_res=low_res, upsampler=upsampler))

    from .runner import ShardSampler, run_shards

    module = ShardSampler(plan, output, None, stage, low_res=np.ascontiguousarray(images), batch_size=batch_size)
    banner = (f"{len(images)} images of {low_res} upsampled {config.low_res_size} -> {config.image_size} px by "
              f"{model.source}; {sampler} {options['steps']}; into {output}")
    result = run_shards(module, settings, banner, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=strategy, timeout_minutes=timeout_minutes, precision=precision, grid=grid,
                        progress=progress, started=started, command="gd upsample")
    log_run(tracking, "upsample", result, settings, dict(low_res=low_res, upsampler=upsampler),
            dict(num_samples=len(images), batch_size=batch_size, devices=devices, num_nodes=num_nodes))
    return result
