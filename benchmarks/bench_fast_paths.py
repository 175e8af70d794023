"""The fast paths side by side: eager vs ``channels_last`` vs ``torch.compile`` (vs both), fp32 and bf16 autocast.

    python benchmarks/bench_fast_paths.py --preset cifar32_adm --classifier cifar32_classifier --batch 8

For each variant, one process times round-robin (one step of every variant per round, so load from
elsewhere affects all alike) and prints medians and ratios to eager fp32:

* train step: forward + hybrid loss + backward of the diffusion network (no optimiser), the cost
  per training batch;
* guided step: one classifier-guided DDIM prediction (model forward, classifier forward + backward
  w.r.t. x_t), the cost per sampling step of ADM-G; and its ratio to the unguided step.

It also reports how close the train step runs to the machine: FLOPs of one step counted by
``torch.utils.flop_counter.FlopCounterMode``, divided by the step time, against the FLOP/s of a
2048^3 matmul in fp32 and bf16 measured in the same run. Weights are random (speed only).
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.guidance import ClassifierGuidance
from guided_diffusion.nets import apply_fast_paths
from guided_diffusion.presets import get_preset
from guided_diffusion.sampling import GuidedPredictor

VARIANTS = {"eager": (False, False), "channels_last": (False, True), "compile": (True, False),
            "compile+channels_last": (True, True)}


def matmul_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar32_adm")
    parser.add_argument("--classifier", default="cifar32_classifier")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--precisions", default="fp32,bf16", help="bf16 = bf16 autocast (slow on CPUs without "
                        "native bf16: AVX512-BF16 / AMX)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset, classifier_preset = get_preset(args.preset), get_preset(args.classifier)
    diffusion = DiffusionConfig(steps=1000, noise_schedule=preset.diffusion.noise_schedule,
                                learn_sigma=preset.diffusion.learn_sigma).build()
    sampling = diffusion.respace("ddim25")
    cfg = preset.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=generator)
    y = torch.randint(0, cfg.num_classes or 1, (args.batch,), generator=generator)
    t = torch.randint(0, 1000, (args.batch,), generator=generator)

    jobs = {}
    for name in args.variants.split(","):
        compile_, channels_last = VARIANTS[name]
        torch.manual_seed(0)
        model = apply_fast_paths(preset.build(), compile_, channels_last)
        sampler_model = apply_fast_paths(preset.build().eval().requires_grad_(False), compile_, channels_last)
        classifier = apply_fast_paths(classifier_preset.build().eval().requires_grad_(False), compile_, channels_last)
        for autocast in [p == "bf16" for p in args.precisions.split(",")]:
            def train(model=model):
                model.zero_grad(set_to_none=True)
                diffusion.training_losses(model, x, t, y=y)["loss"].mean().backward()

            guided = GuidedPredictor(sampler_model, sampling, y=y, guidance=ClassifierGuidance(classifier, 1.0))
            unguided = GuidedPredictor(sampler_model, sampling, y=y)
            index = sampling.num_timesteps // 2
            jobs[(name, autocast)] = {"train": train, "guided": lambda p=guided: p.predict(x, index, "eps"),
                                      "unguided": lambda p=unguided: p.predict(x, index, "eps")}
    times = {key: {part: [] for part in parts} for key, parts in jobs.items()}
    for round_ in range(args.rounds + 1):  # round 0 warms up (and compiles)
        for (name, autocast), parts in jobs.items():
            context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
            for part, run in parts.items():
                with context:
                    start = time.perf_counter()
                    run()
                    elapsed = time.perf_counter() - start
                if round_:
                    times[(name, autocast)][part].append(elapsed)

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        jobs[next(iter(jobs))]["train"]()
    flops = counter.get_total_flops()
    peak = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}
    print(f"{args.preset} + {args.classifier}, batch {args.batch}, {args.threads} threads, torch {torch.__version__};"
          f" train step {flops / 1e9:.1f} GFLOP; 2048^3 matmul: fp32 {peak['fp32'] / 1e9:.0f}, "
          f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s")
    base = statistics.median(times[next(iter(jobs))]["train"])
    print(f"{'variant':24s} {'prec':>5s} {'train ms':>9s} {'vs eager':>9s} {'GFLOP/s':>8s} {'% matmul':>9s} "
          f"{'guided ms':>10s} {'unguided':>9s} {'ratio':>6s}")
    for (name, autocast), parts in times.items():
        precision = "bf16" if autocast else "fp32"
        train, guided, unguided = (statistics.median(parts[p]) for p in ("train", "guided", "unguided"))
        rate = flops / train
        print(f"{name:24s} {precision:>5s} {train * 1e3:9.1f} {base / train:8.2f}x {rate / 1e9:8.0f} "
              f"{100 * rate / peak[precision]:8.0f}% {guided * 1e3:10.1f} {unguided * 1e3:9.1f} "
              f"{guided / unguided:6.2f}")


if __name__ == "__main__":
    main()
