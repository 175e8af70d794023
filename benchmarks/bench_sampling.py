"""Sampling speed: one reverse step, unguided vs classifier-guided vs classifier-free, side by side.

    python benchmarks/bench_sampling.py --preset cifar32_adm --classifier cifar32_classifier --batch 8

Prints ms per step, images/s per network evaluation (NFE) and the guided/unguided ratio, in fp32
and under bf16 autocast. Times are medians over ``--repeats`` steps after ``--warmup`` steps;
machines are noisy, so compare the ratios printed in one run. Weights are random (speed only).
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.presets import get_preset
from guided_diffusion.sampling import ClassifierFreeGuidance, ClassifierGuidance, GuidedPredictor


def time_steps(predictor: GuidedPredictor, x: torch.Tensor, form: str, repeats: int, warmup: int,
               autocast: bool) -> float:
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    index = predictor.process.num_timesteps // 2
    times = []
    with context:
        for i in range(warmup + repeats):
            start = time.perf_counter()
            predictor.predict(x, index, form)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar32_adm")
    parser.add_argument("--classifier", default="cifar32_classifier")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    preset, classifier_preset = get_preset(args.preset), get_preset(args.classifier)
    model, classifier = preset.build().eval(), classifier_preset.build().eval()
    for p in list(model.parameters()) + list(classifier.parameters()):
        p.requires_grad_(False)
    settings = preset.diffusion
    diffusion = DiffusionConfig(steps=settings.steps, noise_schedule=settings.noise_schedule,
                                learn_sigma=settings.learn_sigma).build()
    cfg = model.config
    x = torch.randn(args.batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    y = torch.randint(0, cfg.num_classes or 1, (args.batch,))
    n_model = sum(p.numel() for p in model.parameters()) / 1e6
    n_clf = sum(p.numel() for p in classifier.parameters()) / 1e6
    print(f"{args.preset} ({n_model:.1f}M) + {args.classifier} ({n_clf:.1f}M), batch {args.batch}, "
          f"{args.threads} threads, torch {torch.__version__}")

    variants = {
        "unguided (DDIM step)": (GuidedPredictor(model, diffusion, y=y), "eps", 1),
        "classifier-guided, eps shift (Alg. 2)": (
            GuidedPredictor(model, diffusion, y=y, guidance=ClassifierGuidance(classifier, 1.0)), "eps", 1),
        "classifier-guided, mean shift (Alg. 1)": (
            GuidedPredictor(model, diffusion, y=y, guidance=ClassifierGuidance(classifier, 1.0)), "mean", 1),
        "classifier-free (w = 3)": (
            GuidedPredictor(model, diffusion, y=y, guidance=ClassifierFreeGuidance(3.0, null_label=0)), "eps", 2),
    }
    print(f"{'variant':42s} {'precision':>9s} {'ms/step':>9s} {'img/s/NFE':>10s} {'vs unguided':>12s}")
    for autocast in (False, True):
        base = None
        for name, (predictor, form, nfe) in variants.items():
            seconds = time_steps(predictor, x, form, args.repeats, args.warmup, autocast)
            base = base or seconds
            print(f"{name:42s} {'bf16' if autocast else 'fp32':>9s} {seconds * 1e3:9.1f} "
                  f"{args.batch / seconds * nfe:10.1f} {seconds / base:11.2f}x")


if __name__ == "__main__":
    main()
