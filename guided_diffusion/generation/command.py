"""``gd sample``: class-conditional samples at a chosen guidance scale, on one CPU or many GPUs.

Writes, under ``output``: ``run.json`` (the run's identity), ``shard-START-STOP.npz`` (one per batch,
atomic), and when samples 0..N-1 all exist ``samples_NxHxWxC.npz`` (ADM layout: ``arr_0`` uint8 NHWC,
``arr_1`` int64 labels) and ``grid.png``. The images do not depend on the batch size or the number of
processes; an interrupted run is completed by running the same command again (with any batch size or
devices), and a run is grown by running it again with a larger ``--num_samples`` (only the new indices
are sampled). The run is identified by the content of its files (SHA-256, cached in
``fingerprints.json``), so a checkpoint copied elsewhere still resumes it and one changed in place does not.

With ``--upsampler`` the run is a cascade (ADM-G + ADM-U): each shard's base samples are kept under
``low_res/`` and upsampled by the super-resolution model; the npz and grid hold the final resolution.
``gd upsample`` (:mod:`.upsample`) upsamples samples made elsewhere.
"""
from __future__ import annotations

import time
from typing import Any, Literal, Optional

from ..atomic import check_output_directory
from ..content_hash import content_hash, fingerprint_cache
from ..checkpoints import LoadedNetwork, load_classifier, load_diffusion_model, load_upsampler
from ..cli_types import GuidanceScale, WandbMode
from ..guidance import IntervalVariable, ScheduleName
from ..nets import apply_fast_paths
from ..sampler_protocol import UPSAMPLER_STREAM, NoiseKind
from ..sampling import SamplerName
from ..torch_files import check_torch_file
from ..tracking import Tracking, artifact_name
from .pairing import GuidanceKind, GuidanceOptions, build_guidance, check_upsampler, freeze, label_count
from .plan import SamplePlan, parse_classes
from .reference_flags import check_flags, parse_flags

Precision = Literal["32-true", "bf16-mixed", "16-mixed", "64-true"]
Strategy = Literal["auto", "ddp", "ddp_spawn"]


def sample(checkpoint: str, output: str = "outputs/samples", *, preset: Optional[str] = None,
           classifier: Optional[str] = None, classifier_preset: Optional[str] = None,
           guidance: GuidanceKind = "auto", scale: GuidanceScale = 1.0, schedule: ScheduleName = "constant",
           guidance_interval: Optional[str] = None, interval_in: IntervalVariable = "t", temperature: float = 1.0,
           gradient_at: Literal["x_t", "x0"] = "x_t", guidance_every: int = 1, cfg_scale: Optional[float] = None,
           cfg_interval: Optional[str] = None, sampler: SamplerName = "ddim", steps: Optional[str] = None,
           eta: float = 0.0, clip_denoised: bool = True,
           classes: str = "all", num_samples: int = 100, batch_size: int = 25, seed: int = 0,
           noise: NoiseKind = "auto", ema: bool = True, precision: Precision = "32-true", accelerator: str = "auto",
           devices: int = 1, num_nodes: int = 1,
           strategy: Strategy = "auto", timeout_minutes: float = 30.0,
           inpaint: Optional[str] = None, colorize: Optional[str] = None,
           upsampler: Optional[str] = None, upsampler_preset: Optional[str] = None,
           upsampler_sampler: Optional[SamplerName] = None, upsampler_steps: Optional[str] = None,
           compile: bool = False, channels_last: bool = False, model_flags: Optional[str] = None,
           classifier_flags: Optional[str] = None, grid: bool = True, progress: bool = True,
           wandb_project: Optional[str] = None, wandb_mode: WandbMode = "offline", log_artifacts: bool = False):
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
        schedule: the classifier scale over tau = t / (T - 1): ``constant`` (ADM), ``linear`` s 2 (1 - tau) or
            ``cosine`` s (1 + cos pi tau) (both average s and grow as sampling proceeds).
        guidance_interval: classifier guidance only where ``interval_in`` lies in ``"lo,hi"`` (e.g. ``"0,600"``
            in t, ``"0.3,5"`` in sigma); outside, the classifier is not evaluated.
        interval_in: ``t`` (the model timestep 0..T-1) or ``sigma`` (sigma_t / alpha_t), for both intervals.
        temperature: T dividing the classifier's logits (calibration; 1 = as trained).
        gradient_at: ``x_t`` (ADM) or ``x0``: the classifier's gradient at the predicted x_0 (at t = 0).
        guidance_every: evaluate the classifier gradient every k guided steps, reuse it in between.
        cfg_scale: classifier-free guidance w in addition to classifier guidance (``--scale``), for a model
            trained with label dropout.
        cfg_interval: classifier-free guidance only in ``"lo,hi"`` (w = 1 outside: one batch).
        sampler: ``ddim``, ``ddpm``, ``dpm-solver``, or a score-SDE sampler (``pc``, ...).
        steps: respacing (``"250"``, ``"ddim25"``, ``"10,15,20"``; a plain count for dpm-solver);
            default: ``ddim25`` for ddim, ``250`` for ddpm, 20 for dpm-solver.
        eta: DDIM eta (0 = deterministic).
        clip_denoised: clip predicted x_0 to [-1, 1] at every step.
        classes: ``all`` (cycle 0..K-1), ``random`` (uniform, as the reference) or ``"3"`` / ``"1,7,9"``.
        num_samples: how many samples in total.
        batch_size: samples per shard and per forward pass.
        seed: sample i depends only on (seed, i).
        noise: per-sample noise streams: ``generators`` (a ``torch.Generator`` per sample), ``philox``
            (counter-based Philox streams, the batch in one vectorised draw) or ``auto`` (``philox`` on
            accelerators, ``generators`` on CPU). Part of the run's identity.
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
        upsampler: a super-resolution model (ADM-U: ``.ckpt`` or OpenAI ``.pt``, low-res size = the base
            model's image size): sample a cascade; the base samples are kept in ``output/low_res``.
        upsampler_preset: network preset of an OpenAI upsampler ``.pt`` (default: detected).
        upsampler_sampler: the upsampler's sampler (default: ``sampler``; ``eta`` applies to DDIM in both).
        upsampler_steps: the upsampler's respacing (default: ``steps`` when the samplers agree, else the
            sampler's default).
        compile: ``torch.compile`` every network of the run (first shard slower; the images equal the
            eager ones up to float rounding, so a run may be resumed with or without it).
        channels_last: NHWC memory order for the convolutions (faster on GPUs with tensor cores).
        model_flags: guided-diffusion's MODEL_FLAGS (``"--image_size 64 --num_channels 192 ..."``): checked
            against the model file (the reference's commands run as they are: see
            :mod:`~guided_diffusion.generation.reference_flags`).
        classifier_flags: its CLASSIFIER_FLAGS, checked against the classifier file.
        grid: write ``grid.png`` of the first samples.
        progress: show the progress bar.
        wandb_project: log the run to this W&B project (job type ``sample``: settings, grid, cost; see
            :mod:`~guided_diffusion.tracking`). Default: no W&B run.
        wandb_mode: ``offline`` (the run folder under ``output/wandb``, ``wandb sync`` it later), ``online``,
            ``disabled``.
        log_artifacts: also log the merged ``.npz`` and ``run.json`` as a ``samples`` artifact whose metadata
            names the checkpoint(s) by content hash (online: linked to them as reference artifacts).
    """
    started = time.perf_counter()
    tracking = Tracking(wandb_project, wandb_mode, log_artifacts)
    options = sampler_options(sampler, steps, eta, clip_denoised)
    parse_flags(model_flags, "unet")
    parse_flags(classifier_flags, "encoder_unet")
    guidance_options = GuidanceOptions(schedule, guidance_interval, interval_in, temperature, gradient_at,
                                       guidance_every, cfg_scale, cfg_interval)
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    if inpaint and colorize:
        raise ValueError("--inpaint and --colorize are exclusive")
    if upsampler is None and (upsampler_preset or upsampler_sampler or upsampler_steps):
        raise ValueError("--upsampler_preset, --upsampler_sampler and --upsampler_steps need --upsampler CKPT")

    # Everything that can be wrong is checked here, before any sampling work: the output and that
    # every named file is there and is a PyTorch file (cheap), then the models load.
    check_output_directory(output)
    check_torch_file(checkpoint, "diffusion model checkpoint")
    for path, what in ((classifier, "classifier checkpoint"), (upsampler, "upsampler checkpoint")):
        if path is not None:
            check_torch_file(path, what)
    model = load_diffusion_model(checkpoint, preset, ema=ema)
    check_flags(model_flags, model, "unet", "model")
    guiding = load_classifier(classifier, classifier_preset) if classifier is not None else None
    if guiding is not None:
        check_flags(classifier_flags, guiding, "encoder_unet", "classifier")
    elif classifier_flags:
        raise ValueError("--classifier_flags without a classifier (--classifier / --classifier_path)")
    guidance_object = build_guidance(guidance, scale, model, guiding, guidance_options)
    num_classes = label_count(model, guiding)
    chosen = parse_classes(classes, num_classes)
    plan = SamplePlan(num_samples, seed, num_classes, chosen if isinstance(chosen, str) else tuple(chosen), noise)
    model.diffusion.respace(options["steps"])  # a bad respacing string fails now, not on the first shard
    condition = None
    if inpaint or colorize:
        from .conditions import load_condition

        config = model.config
        condition = load_condition("inpaint" if inpaint else "colorize", inpaint or colorize, config.image_size,
                                   config.in_channels)
    settings = dict(preset=preset, ema=ema, classifier_preset=classifier_preset, guidance=guidance,
                    scale=float(scale), sampler=sampler, steps=str(options["steps"]), eta=eta,
                    clip_denoised=clip_denoised, precision=precision, guidance_options=guidance_options.settings(),
                    **plan.identity())
    super_resolution = None
    if upsampler is not None:
        upsampler_sampler = upsampler_sampler or sampler
        if upsampler_steps is None and upsampler_sampler == sampler:
            upsampler_steps = options["steps"]
        super_resolution = load_upsampler(upsampler, upsampler_preset, ema=ema)
        config = model.config
        check_upsampler(super_resolution, config.image_size, config.in_channels, num_classes,
                        f"the samples of {model.source}")
        upsampler_stage = upsampler_stage_of(super_resolution, sampler_options(
            upsampler_sampler, upsampler_steps, eta if upsampler_sampler == "ddim" else 0.0, clip_denoised))
        settings.update(upsampler_preset=upsampler_preset,
                        upsampler_sampler=upsampler_sampler, upsampler_steps=str(upsampler_stage.options["steps"]))

    # last, once every check has passed: nothing is written for a bad command
    settings.update(file_identities(output, checkpoint=checkpoint, classifier=classifier,
                                    condition=inpaint or colorize, upsampler=upsampler))
    from .runner import Stage, ShardSampler, run_shards

    for network in [model.network] + ([guiding.network] if guiding else []) + (
            [upsampler_stage.network] if super_resolution else []):
        apply_fast_paths(freeze(network), compile, channels_last)
    base = Stage(model.network, model.diffusion, options, guidance_object, condition)
    module = ShardSampler(plan, output, base, upsampler_stage if super_resolution else None, batch_size=batch_size)
    size = model.config.image_size
    banner = (f"{num_samples} samples from {model.source}"
              + (f", guided by {guiding.source} at scale {scale}" if guiding else "")
              + f"; {sampler} {options['steps']}"
              + (f"; upsampled {size} -> {super_resolution.config.image_size} px by {super_resolution.source}, "
                 f"{upsampler_stage.options['sampler']} {upsampler_stage.options['steps']}"
                 if super_resolution else "")
              + f"; into {output}")
    result = run_shards(module, settings, banner, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=strategy, timeout_minutes=timeout_minutes, precision=precision, grid=grid,
                        progress=progress, started=started, command="gd sample")
    inputs = dict(checkpoint=checkpoint, classifier=classifier, upsampler=upsampler, condition=inpaint or colorize)
    log_run(tracking, "sample", result, settings, inputs,
            dict(num_samples=num_samples, batch_size=batch_size, devices=devices, num_nodes=num_nodes))
    return result


def log_run(tracking: Tracking, job_type: str, result, settings: dict[str, Any], paths: dict[str, Optional[str]],
            extra: dict[str, Any]) -> None:
    """The W&B run of a finished ``gd sample`` / ``gd upsample`` (rank 0 only): the settings, the grid, the cost
    per sample and, with ``--log_artifacts``, the merged ``.npz`` and ``run.json`` as a ``samples`` artifact."""
    if result.samples is None or not tracking.enabled:
        return
    output = result.samples.parent
    inputs = {name: (path, settings[name]) for name, path in paths.items() if path is not None}
    run = tracking.start(job_type, output.name, {**settings, **extra, "output": str(output)}, output, inputs)
    if result.grid is not None:
        run.images({"samples": result.grid}, {"samples": f"the first samples of {output}"})
    cost = result.cost.per_sample() if result.cost is not None else {}
    run.metrics({"num_samples": extra["num_samples"], "seconds": round(result.seconds, 2),
                 **{f"cost/{name}_per_sample": value for name, value in cost.items()}})
    files = [result.samples, output / "run.json"] + ([result.low_res] if result.low_res else [])
    run.artifact("samples", artifact_name("samples", content_hash(output / "run.json")), files,
                 {"num_samples": extra["num_samples"]})
    run.finish()


def default_steps(sampler: str) -> str:
    """The respacing a sampler runs when none is given: DDIM-25, DDPM-250 (the reference's), 20 DPM-Solver steps."""
    return {"ddim": "ddim25", "ddpm": "250", "dpm-solver": "20"}.get(sampler, "250")


def sampler_options(sampler: str, steps: Optional[str], eta: float, clip_denoised: bool) -> dict[str, Any]:
    """The keyword options of :func:`guided_diffusion.sampling.sample` for one stage of a run."""
    options: dict[str, Any] = dict(sampler=sampler, steps=default_steps(sampler) if steps is None else steps,
                                   clip_denoised=clip_denoised)
    if sampler == "ddim":
        options["eta"] = eta
    elif eta:
        raise ValueError(f"eta is a DDIM option; sampler {sampler!r} does not take it")
    return options


def upsampler_stage_of(upsampler: LoadedNetwork, options: dict[str, Any]):
    """The super-resolution stage of a cascade (frozen, its own noise stream); a bad respacing fails now."""
    from .runner import Stage

    upsampler.diffusion.respace(options["steps"])
    return Stage(freeze(upsampler.network), upsampler.diffusion, options, stream=UPSAMPLER_STREAM)


def file_identities(output: str, **paths: Optional[str]) -> dict[str, Optional[str]]:
    """The SHA-256 content hash of each named file (``None`` stays ``None``), cached in ``output/fingerprints.json``
    by path, size and mtime: a copied or moved checkpoint is the same run, one changed in place is not."""
    cache = fingerprint_cache(output)
    return {name: None if path is None else content_hash(path, cache) for name, path in paths.items()}
