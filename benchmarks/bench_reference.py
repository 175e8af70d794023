"""This project against the reference guided-diffusion, side by side in one process, with the same weights.

    python benchmarks/bench_reference.py --reference /path/to/guided-diffusion --preset cifar32_adm \\
        --classifier cifar32_classifier --batch 8 --threads 2

``--reference`` is a checkout of openai/guided-diffusion (the directory holding ``guided_diffusion/``, or that
package directory itself). It is imported under the name ``reference_guided_diffusion`` (its imports are
relative, so it and this project's ``guided_diffusion`` live side by side); nothing is downloaded and without
``--reference`` only this project's columns are printed. The reference network is built from the preset's
config and loads this project's state dict (the key layouts are the same), so both compute the same function.

Timed round-robin (one step of every job per round, medians over ``--rounds``, so load from elsewhere hits all
jobs alike):

* train step: forward + hybrid loss (``training_losses``) + backward, fp32 and bf16 autocast;
* DDIM step: one ``ddim25`` step at the middle of the schedule, unguided and classifier-guided (scale 1; the
  reference's ``cond_fn`` of ``classifier_sample.py``: the gradient of log p(y | x_t) by autograd), fp32 and bf16.

Also printed: the train step's FLOPs (``FlopCounterMode``) over its time against a 2048^3 matmul's FLOP/s in the
same run, and the peak memory of one fp32 train step with and without gradient checkpointing (a fresh process
per variant, as ``bench_unet.py``). Weights are random (speed only), the zero-initialised output layers
re-initialised so every layer counts.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import multiprocessing as mp
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling benchmark scripts
from bench_fast_paths import matmul_flops  # noqa: E402
from bench_unet import _reset_peak_rss, _status_mib  # noqa: E402

from guided_diffusion.diffusion import DiffusionConfig  # noqa: E402
from guided_diffusion.guidance import ClassifierGuidance  # noqa: E402
from guided_diffusion.presets import get_preset  # noqa: E402
from guided_diffusion.sampling import GuidedPredictor  # noqa: E402
from guided_diffusion.sampling.ddim import ddim_step  # noqa: E402

REFERENCE_PACKAGE = "reference_guided_diffusion"
RESPACING = "ddim25"


def import_reference(path: str | os.PathLike):
    """The reference package at ``path`` (a checkout or its ``guided_diffusion/``) as ``reference_guided_diffusion``;
    returns its ``(unet, script_util)`` modules."""
    root = Path(path)
    package = root / "guided_diffusion" if (root / "guided_diffusion" / "unet.py").is_file() else root
    if not (package / "unet.py").is_file() or not (package / "script_util.py").is_file():
        raise SystemExit(f"--reference {path}: no guided_diffusion package (unet.py, script_util.py) there")
    if REFERENCE_PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(REFERENCE_PACKAGE, package / "__init__.py",
                                                      submodule_search_locations=[str(package)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[REFERENCE_PACKAGE] = module
        spec.loader.exec_module(module)
    return (importlib.import_module(f"{REFERENCE_PACKAGE}.unet"),
            importlib.import_module(f"{REFERENCE_PACKAGE}.script_util"))


def _attention_ds(config) -> tuple[int, ...]:
    return tuple(config.image_size // resolution for resolution in config.attention_resolutions)


def reference_networks(unet, preset, classifier_preset, use_checkpoint: bool = False):
    """The reference UNetModel / EncoderUNetModel of the two presets' configs."""
    c = preset.config
    model = unet.UNetModel(
        image_size=c.image_size, in_channels=c.in_channels, model_channels=c.model_channels,
        out_channels=c.resolved_out_channels, num_res_blocks=c.num_res_blocks, attention_resolutions=_attention_ds(c),
        dropout=c.dropout, channel_mult=c.resolved_channel_mult, conv_resample=c.conv_resample,
        num_classes=c.num_classes, use_checkpoint=use_checkpoint, num_heads=c.num_heads,
        num_head_channels=c.num_head_channels, num_heads_upsample=c.num_heads_upsample,
        use_scale_shift_norm=c.use_scale_shift_norm, resblock_updown=c.resblock_updown,
        use_new_attention_order=c.use_new_attention_order)
    k = classifier_preset.config
    classifier = unet.EncoderUNetModel(
        image_size=k.image_size, in_channels=k.in_channels, model_channels=k.model_channels,
        out_channels=k.num_classes, num_res_blocks=k.num_res_blocks, attention_resolutions=_attention_ds(k),
        channel_mult=k.resolved_channel_mult, num_head_channels=k.num_head_channels,
        use_scale_shift_norm=k.use_scale_shift_norm, resblock_updown=k.resblock_updown, pool=k.pool)
    return model, classifier


def reference_diffusion(script_util, config: DiffusionConfig, respacing: str = ""):
    return script_util.create_gaussian_diffusion(
        steps=config.steps, learn_sigma=config.learn_sigma, sigma_small=config.sigma_small,
        noise_schedule=config.noise_schedule, use_kl=config.use_kl, predict_xstart=config.predict_xstart,
        rescale_timesteps=config.rescale_timesteps, rescale_learned_sigmas=config.rescale_learned_sigmas,
        timestep_respacing=respacing)


def randomised(network: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for module in network.modules():  # undo the zero init of the output layers
        weight = getattr(module, "weight", None)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and weight is not None and not weight.any():
            module.reset_parameters()
    return network


def reference_cond_fn(classifier, scale: float):
    """grad_x log p(y | x_t) * scale, as the reference's sampling script computes it."""
    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(classifier(x_in, t), dim=-1)
            chosen = log_probs.gather(1, y[:, None]).sum()
            return torch.autograd.grad(chosen, x_in)[0] * scale
    return cond_fn


class Setup:
    """Both implementations' networks (same weights), diffusions and fixed inputs."""

    def __init__(self, args, use_checkpoint: bool = False):
        self.preset, self.classifier_preset = get_preset(args.preset), get_preset(args.classifier)
        self.model = randomised(self.preset.build(use_checkpoint=use_checkpoint))
        self.classifier = randomised(self.classifier_preset.build()).eval().requires_grad_(False)
        self.diffusion = self.preset.diffusion.build()
        self.sampling = self.diffusion.respace(RESPACING)
        c = self.preset.config
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(args.batch, c.in_channels, c.image_size, c.image_size, generator=generator)
        self.noise = torch.randn(self.x.shape, generator=generator)
        self.t = torch.randint(0, self.diffusion.num_timesteps, (args.batch,), generator=generator)
        self.y = torch.randint(0, c.num_classes or 1, (args.batch,), generator=generator)
        self.index = self.sampling.num_timesteps // 2
        self.reference = None
        if args.reference:
            unet, script_util = import_reference(args.reference)
            model, classifier = reference_networks(unet, self.preset, self.classifier_preset, use_checkpoint)
            model.load_state_dict(self.model.state_dict())
            classifier.load_state_dict(self.classifier.state_dict())
            # The reference classifier keeps requires_grad (as its sampling script): its attention blocks always
            # checkpoint, and that backward fails on frozen parameters.
            self.reference = dict(model=model, classifier=classifier.eval(),
                                  diffusion=reference_diffusion(script_util, self.preset.diffusion),
                                  sampling=reference_diffusion(script_util, self.preset.diffusion, RESPACING))

    def ours(self) -> dict:
        model, sampler_model = self.model, self.model

        def train():
            model.zero_grad(set_to_none=True)
            self.diffusion.training_losses(model, self.x, self.t, y=self.y, noise=self.noise)["loss"].mean().backward()

        guided = GuidedPredictor(sampler_model, self.sampling, y=self.y,
                                 guidance=ClassifierGuidance(self.classifier, 1.0))
        unguided = GuidedPredictor(sampler_model, self.sampling, y=self.y)

        def step(predictor):
            with torch.no_grad():
                return ddim_step(self.sampling, predictor.predict(self.x, self.index, "eps"), self.x, self.index, 0.0)
        return {"train": train, "guided": lambda: step(guided), "unguided": lambda: step(unguided)}

    def theirs(self) -> dict:
        ref = self.reference
        model, kwargs = ref["model"], {"y": self.y}
        t = torch.full((len(self.x),), self.index, dtype=torch.long)
        cond_fn = reference_cond_fn(ref["classifier"], 1.0)

        def train():
            model.zero_grad(set_to_none=True)
            ref["diffusion"].training_losses(model, self.x, self.t, model_kwargs=kwargs,
                                             noise=self.noise)["loss"].mean().backward()

        def step(cond):
            with torch.no_grad():
                return ref["sampling"].ddim_sample(model, self.x, t, clip_denoised=True, model_kwargs=kwargs,
                                                   cond_fn=cond)["sample"]
        return {"train": train, "guided": lambda: step(cond_fn), "unguided": lambda: step(None)}


def check_same_function(setup: Setup) -> float:
    """Relative difference of the two implementations' guided DDIM step (fp32): they must compute the same."""
    ours, theirs = setup.ours()["guided"](), setup.theirs()["guided"]()
    return float((ours - theirs).norm() / theirs.norm())


def _peak_train_memory(args, implementation: str, use_checkpoint: bool, queue) -> None:
    torch.set_num_threads(args.threads)
    setup = Setup(args, use_checkpoint)
    train = (setup.ours() if implementation == "ours" else setup.theirs())["train"]
    train()  # one-time allocations first
    (setup.model if implementation == "ours" else setup.reference["model"]).zero_grad(set_to_none=True)
    gc.collect()
    if not _reset_peak_rss() or _status_mib("VmHWM") is None:
        queue.put(float("nan"))
        return
    base = _status_mib("VmRSS")
    train()
    queue.put(_status_mib("VmHWM") - base)


def peak_memory(args) -> dict[tuple[str, bool], float]:
    context, peaks = mp.get_context("spawn"), {}
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # freed blocks leave the RSS
    try:
        for implementation in ["ours"] + (["reference"] if args.reference else []):
            for use_checkpoint in (False, True):
                queue = context.Queue()
                process = context.Process(target=_peak_train_memory, args=(args, implementation, use_checkpoint, queue))
                process.start()
                process.join()
                peaks[(implementation, use_checkpoint)] = queue.get() if process.exitcode == 0 else float("nan")
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_")
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    return peaks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="a checkout of openai/guided-diffusion (optional)")
    parser.add_argument("--preset", default="cifar32_adm")
    parser.add_argument("--classifier", default="cifar32_classifier")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = Setup(args)
    implementations = {"ours": setup.ours()}
    if setup.reference:
        implementations["reference"] = setup.theirs()
        print(f"same function: relative difference of the guided DDIM step {check_same_function(setup):.2e}")
    precisions = args.precisions.split(",")
    times = {(who, precision, part): [] for who, parts in implementations.items() for precision in precisions
             for part in parts}
    failures = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for (who, precision, part), samples in times.items():
            if (who, precision, part) in failures:
                continue
            context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
            try:
                with context:
                    start = time.perf_counter()
                    implementations[who][part]()
                    elapsed = time.perf_counter() - start
            except Exception as error:  # the reference may not run under autocast
                failures[(who, precision, part)] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
                continue
            if round_:
                samples.append(elapsed)

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        implementations["ours"]["train"]()
    flops = counter.get_total_flops()
    peak = {precision: matmul_flops(torch.bfloat16 if precision == "bf16" else torch.float32)
            for precision in precisions}
    median = {key: statistics.median(samples) for key, samples in times.items() if samples}
    rates = ", ".join(f"{precision} {rate / 1e9:.1f}" for precision, rate in peak.items())
    print(f"{args.preset} + {args.classifier}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}; "
          f"train step {flops / 1e9:.1f} GFLOP; 2048^3 matmul {rates} GFLOP/s; medians of {args.rounds} rounds")
    reference_fp32 = median.get(("reference", "fp32", "train"))
    print(f"{'':10s} {'prec':>5s} {'train ms':>9s} {'GFLOP/s':>8s} {'% matmul':>8s} {'vs ref fp32':>11s} "
          f"{'unguided ms':>11s} {'guided ms':>10s} {'ratio':>6s}")
    for who in implementations:
        for precision in precisions:
            if (who, precision, "train") in failures:
                print(f"{who:10s} {precision:>5s} cannot run: {failures[(who, precision, 'train')]}")
                continue
            train = median[(who, precision, "train")]
            unguided, guided = median.get((who, precision, "unguided")), median.get((who, precision, "guided"))
            rate = flops / train
            speedup = f"{reference_fp32 / train:10.2f}x" if reference_fp32 else f"{'-':>11s}"
            steps = (f"{unguided * 1e3:11.1f} {guided * 1e3:10.1f} {guided / unguided:6.2f}" if unguided and guided
                     else "  (sampling step cannot run)")
            print(f"{who:10s} {precision:>5s} {train * 1e3:9.1f} {rate / 1e9:8.0f} "
                  f"{100 * rate / peak[precision]:7.0f}% {speedup} {steps}")
    if not args.no_memory:
        peaks = peak_memory(args)
        print("peak memory of one fp32 train step (MiB, VmHWM - VmRSS):")
        for (who, use_checkpoint), mib in peaks.items():
            print(f"  {who:10s} {'use_checkpoint' if use_checkpoint else 'plain':15s} {mib:8.1f}")


if __name__ == "__main__":
    main()
