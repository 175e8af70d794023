"""``gd sample``: class-conditional samples at a chosen guidance scale, on one CPU or many GPUs.

Writes, under ``output``: ``run.json`` (the run's settings), ``shard-*.npz`` (one per batch,
atomic), and when all shards exist ``samples_NxHxWxC.npz`` (ADM layout: ``arr_0`` uint8 NHWC,
``arr_1`` int64 labels) and ``grid.png``. The images do not depend on the number of processes; an
interrupted run is completed by running the same command again.
"""
from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path
from typing import Literal, Optional

from ..atomic import check_output_directory
from ..cli_types import GuidanceScale
from ..torch_files import check_torch_file
from ..sampling import SamplerName
from ..checkpoints import load_classifier, load_diffusion_model
from .pairing import GuidanceKind, build_guidance, freeze, label_count
from ..images import save_grid
from .plan import SamplePlan, parse_classes
from .shards import check_manifest, merge_shards, read_shard

Precision = Literal["32-true", "bf16-mixed", "16-mixed", "64-true"]


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """Where a run's outputs are (``None`` on ranks other than 0)."""

    samples: Optional[Path]
    grid: Optional[Path]
    seconds: float


def sample(checkpoint: str, output: str = "outputs/samples", *, preset: Optional[str] = None,
           classifier: Optional[str] = None, classifier_preset: Optional[str] = None,
           guidance: GuidanceKind = "auto", scale: GuidanceScale = 1.0,
           sampler: SamplerName = "ddim", steps: Optional[str] = None, eta: float = 0.0, clip_denoised: bool = True,
           classes: str = "all", num_samples: int = 100, batch_size: int = 25, seed: int = 0, ema: bool = True,
           precision: Precision = "32-true", accelerator: str = "auto", devices: int = 1, num_nodes: int = 1,
           strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto", timeout_minutes: float = 30.0,
           inpaint: Optional[str] = None, colorize: Optional[str] = None,
           grid: bool = True, progress: bool = True) -> SampleResult:
    """Generate samples from a diffusion model, optionally guided, into resumable shards and an ADM ``.npz``.

    Args:
        checkpoint: the diffusion model: this project's ``.ckpt`` or a released OpenAI ``.pt``.
        output: directory of the run (shards, ``run.json``, the merged ``.npz``, ``grid.png``).
        preset: network preset of an OpenAI ``.pt`` (default: detected from its keys).
        classifier: noise-aware classifier for classifier guidance (``.ckpt`` or OpenAI ``.pt``).
        classifier_preset: network preset of an OpenAI classifier ``.pt`` (default: detected).
        guidance: ``auto`` (classifier guidance when a classifier is given), ``none``, ``classifier``
            or ``classifier-free`` (a model trained with label dropout).
        scale: guidance scale (classifier: s in mu + s Sigma grad log p(y|x_t); classifier-free: w).
        sampler: ``ddim``, ``ddpm``, ``dpm-solver``, or a score-SDE sampler (``pc``, ...).
        steps: respacing (``"250"``, ``"ddim25"``, ``"10,15,20"``; a plain count for dpm-solver);
            default: ``ddim25`` for ddim, ``250`` for ddpm, 20 for dpm-solver.
        eta: DDIM eta (0 = deterministic).
        clip_denoised: clip predicted x_0 to [-1, 1] at every step.
        classes: ``all`` (cycle 0..K-1), ``random`` (uniform, as the reference) or ``"3"`` / ``"1,7,9"``.
        num_samples: how many samples in total.
        batch_size: samples per shard and per forward pass.
        seed: sample i depends only on (seed, i).
        ema: use the EMA weights of a ``.ckpt`` (``false``: the raw training weights).
        precision: Lightning precision (``bf16-mixed`` is ~1.5-2x faster on CPUs with bf16 and on GPUs).
        accelerator: ``cpu``, ``gpu``, ``auto``...
        devices: processes per node (DDP when > 1).
        num_nodes: nodes of a multi-node run.
        strategy: ``auto`` (DDP when several devices), ``ddp`` or ``ddp_spawn``.
        timeout_minutes: DDP collective timeout (a missing peer fails instead of hanging).
        inpaint: ``.npz`` with ``arr_0`` (uint8 NHWC) and ``mask`` (1 = keep): fill in the rest;
            sample i completes image i mod N.
        colorize: ``.npz`` with ``arr_0`` grey (or RGB) images: colour images with that grey.
        grid: write ``grid.png`` of the first samples.
        progress: show the progress bar.
    """
    started = time.perf_counter()
    if steps is None:
        steps = {"ddim": "ddim25", "ddpm": "250", "dpm-solver": "20"}.get(sampler, "250")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")

    # Everything that can be wrong is checked here, before any sampling work: the output and that
    # every named file is there and is a PyTorch file (cheap), then the models load.
    check_output_directory(output)
    check_torch_file(checkpoint, "diffusion model checkpoint")
    if classifier is not None:
        check_torch_file(classifier, "classifier checkpoint")
    model = load_diffusion_model(checkpoint, preset, ema=ema)
    guiding = load_classifier(classifier, classifier_preset) if classifier is not None else None
    guidance_object = build_guidance(guidance, scale, model, guiding)
    num_classes = label_count(model, guiding)
    chosen = parse_classes(classes, num_classes)
    plan = SamplePlan(num_samples, batch_size, seed, num_classes, chosen if isinstance(chosen, str) else tuple(chosen))
    model.diffusion.respace(steps)  # a bad respacing string fails now, not on the first shard
    if inpaint and colorize:
        raise ValueError("--inpaint and --colorize are exclusive")
    condition = None
    if inpaint or colorize:
        from .conditions import load_condition

        config = model.config
        condition = load_condition("inpaint" if inpaint else "colorize", inpaint or colorize, config.image_size,
                                   config.in_channels)
    settings = dict(checkpoint=_fingerprint(checkpoint), preset=preset, ema=ema,
                    classifier=_fingerprint(classifier) if classifier else None,
                    classifier_preset=classifier_preset, guidance=guidance, scale=float(scale), sampler=sampler,
                    steps=str(steps), eta=eta, clip_denoised=clip_denoised, precision=precision,
                    condition=_fingerprint(inpaint or colorize) if condition else None,
                    **dataclasses.asdict(plan))
    options = dict(sampler=sampler, steps=steps, clip_denoised=clip_denoised)
    if sampler == "ddim":
        options["eta"] = eta
    elif eta:
        raise ValueError(f"eta is a DDIM option; sampler {sampler!r} does not take it")

    import lightning as L

    from .runner import ShardQueue, ShardSampler

    freeze(model.network)
    if guiding is not None:
        freeze(guiding.network)
    module = ShardSampler(model.network, model.diffusion, plan, output, guidance_object, options, condition)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=_strategy(strategy, devices * num_nodes, timeout_minutes), precision=precision,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=progress, inference_mode=False,  # guidance differentiates w.r.t. x
                        use_distributed_sampler=False, default_root_dir=output)
    if trainer.is_global_zero:
        check_manifest(output, settings)
        print(f"gd sample: {num_samples} samples from {model.source}"
              + (f", guided by {guiding.source} at scale {scale}" if guiding else "")
              + f"; {sampler} {steps}; {plan.num_shards} shards of {batch_size} in {output}")
    trainer.strategy.barrier("manifest")
    trainer.predict(module, datamodule=ShardQueue(plan, output), return_predictions=False)
    if not trainer.is_global_zero:
        return SampleResult(None, None, time.perf_counter() - started)
    merged = module.merged or merge_shards(output, plan)  # ddp_spawn: the merge happened in a worker
    grid_path = None
    if grid:
        images, _ = read_shard(merged)
        grid_path = save_grid(images[:100], Path(output) / "grid.png")
    seconds = time.perf_counter() - started
    print(f"wrote {merged}" + (f" and {grid_path}" if grid_path else "") + f" in {seconds:.1f} s")
    return SampleResult(merged, grid_path, seconds)


def _fingerprint(path: str) -> str:
    """Path, size and modification time: a retrained or replaced checkpoint is a different run."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()} ({stat.st_size} bytes, mtime {stat.st_mtime_ns})"


def _strategy(name: str, world_size: int, timeout_minutes: float):
    if name == "auto" and world_size <= 1:
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    start_method = "spawn" if name == "ddp_spawn" else "popen"
    return DDPStrategy(start_method=start_method, timeout=timedelta(minutes=timeout_minutes))
