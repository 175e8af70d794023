"""``gd sample``: class-conditional samples at a chosen guidance scale, on one CPU or many GPUs.

Writes, under ``--output``: ``run.json`` (the run's identity), ``shard-START-STOP.npz`` (one per batch,
atomic), and when samples 0..N-1 all exist ``samples_NxHxWxC.npz`` (ADM layout: ``arr_0`` uint8 NHWC,
``arr_1`` int64 labels) and ``grid.png``. The images do not depend on the batch size or the number of
processes; an interrupted run is completed by running the same command again (with any batch size or
devices), and a run is grown by running it again with a larger ``--num_samples`` (only the new indices
are sampled). The run is identified by the content of its files (SHA-256, cached in
``fingerprints.json``), so a checkpoint copied elsewhere still resumes it and one changed in place does not.

With ``--upsampler`` the run is a cascade (ADM-G + ADM-U): each shard's base samples are kept under
``low_res/`` and upsampled by the super-resolution model; the npz and grid hold the final resolution.
``gd upsample`` upsamples samples made elsewhere.
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, Optional

from ..atomic import check_own_directory
from ..checkpoints import LoadedNetwork, load_classifier, load_diffusion_model, load_timm_classifier, load_upsampler
from ..checkpoints.timm_file import timm_head_classes
from ..content_hash import content_hash
from ..generation.pairing import check_guide, check_pair, check_upsampler, freeze, label_count
from ..generation.plan import SamplePlan, parse_classes
from ..generation.reference_flags import check_flags, translate, uses_reference_flags
from ..generation.request import NetworkFiles, OutputOptions, SampleRequest
from ..guidance import GuidanceOptions
from ..generation.runner import SampleResult, ShardJob, Stage, run_shards
from ..generation.shards import MANIFEST, RUN_FILES, check_merge_fits, read_manifest
from ..nets import apply_fast_paths
from ..noise import UPSAMPLER_STREAM
from ..sampling.options import SamplerOptions
from ..torch_files import check_torch_file
from ..tracking import TrackingOptions, artifact_name
from .command import Command


def run_sample(request: SampleRequest) -> SampleResult:
    """Generate samples from a diffusion model, optionally guided, into resumable shards and an ADM ``.npz``."""
    started = time.perf_counter()
    output, networks, plan_options = request.output.output, request.networks, request.plan
    # Everything that can be wrong is checked here, before any sampling work: the output and that every named
    # file is there and is a PyTorch file (cheap), then the models load.
    check_run_directory(request.output)
    request.launch.check_available()
    check_torch_file(request.checkpoint, "diffusion model checkpoint")
    for path, what in ((networks.classifier, "classifier checkpoint"), (networks.guide_model, "guide model checkpoint"),
                       (request.cascade.upsampler, "upsampler checkpoint")):
        if path is not None:
            check_torch_file(path, what)
    model = load_diffusion_model(request.checkpoint, networks.preset, ema=networks.ema)
    check_flags(networks.model_flags, model, "unet", "model")
    guide = None
    if networks.guide_model is not None:
        guide = load_diffusion_model(networks.guide_model, None, ema=networks.ema)
        check_guide(model, guide, classifier_free=request.guidance.uses_classifier_free)
    guiding = load_guiding_classifier(networks, model, request.guidance)
    guidance = request.guidance.build(None if guiding is None else guiding.network, model.null_label,
                                      guide=None if guide is None else guide.network,
                                      clean=guiding is not None and guiding.clean)
    num_classes = label_count(model, guiding)
    chosen = parse_classes(plan_options.classes, num_classes)
    plan = SamplePlan(plan_options.num_samples, plan_options.seed, num_classes,
                      chosen if isinstance(chosen, str) else tuple(chosen), plan_options.noise)
    config = model.config
    check_merge_fits(plan.num_samples, (config.image_size, config.image_size, config.in_channels))
    sampling = request.sampler.kwargs(model.diffusion)  # the time grid: a bad respacing fails now, in one line
    condition = None
    if request.condition.path:
        from ..generation.conditions import load_condition

        condition = load_condition("inpaint" if request.condition.inpaint else "colorize", request.condition.path,
                                   config.image_size, config.in_channels)
    settings = dict(preset=networks.preset, ema=networks.ema, classifier_preset=networks.classifier_preset,
                    **request.guidance.identity(), **request.sampler.identity(),
                    precision=request.launch.resolved_precision, **plan.identity())
    if networks.classifier_arch is not None:  # recorded only when set: earlier runs keep their identity
        settings["classifier_arch"] = networks.classifier_arch
    upsampler_stage, super_resolution, options = None, None, None
    if request.cascade.upsampler is not None:
        options = request.cascade.sampler_of(request.sampler)
        super_resolution = load_upsampler(request.cascade.upsampler, request.cascade.upsampler_preset,
                                          ema=networks.ema)
        check_upsampler(super_resolution, config.image_size, config.in_channels, num_classes,
                        f"the samples of {model.source}")
        size = super_resolution.config.image_size
        check_merge_fits(plan.num_samples, (size, size, super_resolution.config.in_channels))
        upsampler_stage = upsampler_stage_of(super_resolution, options)
        settings.update(upsampler_preset=request.cascade.upsampler_preset, upsampler_sampler=options.sampler,
                        upsampler_steps=options.resolved_steps)

    launch = request.launch
    for network in [model.network] + ([guiding.network] if guiding else []) + ([guide.network] if guide else []) + (
            [upsampler_stage.network] if upsampler_stage else []):
        apply_fast_paths(freeze(network), launch.compile, launch.channels_last)
    base = Stage(model.network, model.diffusion, sampling, guidance, condition)
    job = ShardJob(plan, output, base, upsampler_stage, batch_size=plan_options.batch_size)
    size = model.config.image_size
    sampler = request.sampler
    banner = (f"{plan.num_samples} samples from {model.source}"
              + (f", guided by {guiding.source} ({request.guidance.kind_for(True)}"
                 + (f", scale {request.guidance.scale:g})" if request.guidance.kind_for(True) == "classifier" else ")")
                 if guiding else "")
              + (f", autoguided by {guide.source} at w = {request.guidance.guide_scale:g}" if guide else "")
              + f"; {sampler.sampler} {sampler.resolved_steps}"
              + (f"; upsampled {size} -> {super_resolution.config.image_size} px by {super_resolution.source}, "
                 f"{options.sampler} {options.resolved_steps}"
                 if super_resolution else "")
              + f"; into {output}")
    inputs = dict(checkpoint=request.checkpoint, classifier=networks.classifier, condition=request.condition.path,
                  upsampler=request.cascade.upsampler)
    if networks.guide_model is not None:  # named only when given: earlier runs keep their identity
        inputs["guide_model"] = networks.guide_model
    result = run_shards(job, settings, banner, launch, files=inputs, grid=request.output.grid,
                        progress=request.output.progress, started=started, command="gd sample")
    log_run(request.tracking, "sample", result, inputs,
            dict(num_samples=plan.num_samples, batch_size=plan_options.batch_size, devices=launch.devices,
                 num_nodes=launch.num_nodes))
    return result


def load_guiding_classifier(networks: NetworkFiles, model: LoadedNetwork,
                            guidance: GuidanceOptions) -> Optional[LoadedNetwork]:
    """The classifier of ``--classifier`` (``None``: not given), checked against the model: a noise-aware one (this
    project's ``.ckpt`` or an OpenAI ``.pt``), a clean one (a ``.ckpt`` trained with ``noised: false``) or a timm
    network's weights (``--classifier_arch``, clean)."""
    if networks.classifier is None:
        return None
    if networks.classifier_arch is not None:
        return load_timm_guide(networks.classifier, networks.classifier_arch, model)
    guiding = load_classifier(networks.classifier, networks.classifier_preset)
    check_flags(networks.classifier_flags, guiding, "encoder_unet", "classifier")
    if guidance.kind_for(True) in ("classifier", "training-free"):
        check_pair(model, guiding, clean=guiding.clean)
    return guiding


def load_timm_guide(path: str, arch: str, model: LoadedNetwork) -> LoadedNetwork:
    """A timm classifier of clean images from a plain weight file, for the model's images and classes (its class
    count read from the file's head when the model is unconditional)."""
    config = model.config
    num_classes = model.num_classes or timm_head_classes(path, arch, config.in_channels)
    network = load_timm_classifier(path, arch, num_classes, config.in_channels)
    network.config = SimpleNamespace(image_size=config.image_size, in_channels=config.in_channels,
                                     num_classes=num_classes)
    return LoadedNetwork(network, model.diffusion, f"{path} (timm {arch}, clean images)", clean=True)


def log_run(tracking: TrackingOptions, job_type: str, result: SampleResult, paths: dict[str, Optional[str]],
            extra: dict[str, Any]) -> None:
    """The W&B run of a finished ``gd sample`` / ``gd upsample`` (rank 0 only): the settings, the grid, the cost
    per sample and, with ``--log_artifacts``, the merged ``.npz`` and ``run.json`` as a ``samples`` artifact."""
    if result.samples is None or not tracking.enabled:
        return
    settings = result.settings
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


def upsampler_stage_of(upsampler: LoadedNetwork, options: SamplerOptions) -> Stage:
    """The super-resolution stage of a cascade (frozen, its own noise stream); a bad respacing fails now."""
    return Stage(freeze(upsampler.network), upsampler.diffusion, options.kwargs(upsampler.diffusion),
                 stream=UPSAMPLER_STREAM)


def check_run_directory(output: OutputOptions) -> None:
    """The run's directory: writable, holding no sample files of another run (one without ``run.json``), and a
    ``run.json`` that reads back."""
    path = check_own_directory(output.output, "--output", RUN_FILES, MANIFEST, overwrite=output.overwrite)
    read_manifest(path)


def _translate(argv: list[str]) -> tuple[list[str], Optional[str]]:
    return translate(argv) if uses_reference_flags(argv) else (argv, None)


COMMAND = Command("sample", "class-conditional samples, optionally guided, into resumable shards and an ADM .npz",
                  SampleRequest, run_sample, translate=_translate)


def sample(checkpoint: str, output: str = "outputs/samples", **options: Any) -> SampleResult:
    """``gd sample`` from Python: ``sample("model.ckpt", "out", classifier="clf.ckpt", scale=3, num_samples=50)``.

    ``options`` are the command's options by name (the fields of the groups of
    :class:`~guided_diffusion.generation.request.SampleRequest`).
    """
    return COMMAND(checkpoint, output=output, **options)


__all__ = ["COMMAND", "run_sample", "sample", "log_run", "upsampler_stage_of", "check_run_directory"]
