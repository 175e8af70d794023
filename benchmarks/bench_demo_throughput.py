"""The demo networks' training throughput against what this machine's matrix units can do.

For each demo network (the diffusion model and the noise-aware classifier of ``configs/mnist``, at their
configs' batch sizes) and each precision (``32-true``, ``bf16-mixed``), in one process:

* images/s: batch / the median training step through the Lightning Trainer (forward, backward, AdamW, EMA:
  :func:`guided_diffusion.commands.demo_plan.time_training_steps`, the measurement ``gd demo`` plans with);
* GFLOP per step: the network's forward and backward counted by ``torch.utils.flop_counter`` (convolutions,
  matmuls, attention; elementwise work is not counted, so the fraction below is a floor);
* the achieved FLOP rate as a fraction of the same process's dense matmul rate at that precision
  (1024 x 1024 x 1024, the fastest of 10: the best the BLAS / oneDNN kernels reach here).

A fraction near 1 says the time goes to the arithmetic the network needs; a low one says it goes elsewhere
(``--profile`` prints the operators that take it). Say which CPU class the figures come from: ``grep -o
avx512_bf16 /proc/cpuinfo`` (empty: AVX2 only, where bf16 is emulated and the bf16 rows only show that).

    python benchmarks/bench_demo_throughput.py                       # fp32 and bf16
    python benchmarks/bench_demo_throughput.py --precisions 32-true --profile
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guided_diffusion.commands.demo import CONFIGS  # noqa: E402
from guided_diffusion.commands.demo_plan import time_training_steps  # noqa: E402

# benchmarks run as scripts, so sibling scripts are importable: one matmul-rate probe
from bench_fast_paths import matmul_flops  # noqa: E402


def step_flops(module, batch_size: int, precision: str) -> float:
    """FLOPs of one forward and backward of the module's network on a training batch."""
    config = getattr(module, "config")
    x = torch.randn(batch_size, config.in_channels, config.image_size, config.image_size)
    t = torch.randint(0, 1000, (batch_size,))
    y = torch.randint(0, 10, (batch_size,))
    network = module.model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    with FlopCounterMode(display=False) as counter, autocast:
        out = network(x, t, y=y) if hasattr(network, "label_emb") else network(x, t)
        out.float().square().mean().backward()
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="32-true,bf16-mixed")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps (after 2 of warm-up)")
    parser.add_argument("--profile", action="store_true", help="the operators of a diffusion step, by self time")
    args = parser.parse_args()
    bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None
    print(f"threads {torch.get_num_threads()}, avx512_bf16: {bf16}")
    rates = {"32-true": matmul_flops(torch.float32, size=1024, repeats=10),
             "bf16-mixed": matmul_flops(torch.bfloat16, size=1024, repeats=10)}
    print(f"matmul: fp32 {rates['32-true'] / 1e9:.1f} GFLOP/s, bf16 {rates['bf16-mixed'] / 1e9:.1f} GFLOP/s")
    print(f"{'network':<11} {'precision':<11} {'batch':>5} {'s/step':>7} {'images/s':>9} {'GFLOP/step':>10} "
          f"{'GFLOP/s':>8} {'of matmul':>9}")
    for precision in args.precisions.split(","):
        for name in ("diffusion", "classifier"):
            seconds, module, batch = time_training_steps(CONFIGS / f"{name}.yaml", [], precision, "cpu",
                                                         steps=args.steps)
            flops = step_flops(module, batch, precision)
            achieved = flops / seconds
            print(f"{name:<11} {precision:<11} {batch:>5} {seconds:>7.3f} {batch / seconds:>9.1f} "
                  f"{flops / 1e9:>10.2f} {achieved / 1e9:>8.1f} {achieved / rates[precision]:>9.0%}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        _, module, batch = time_training_steps(CONFIGS / "diffusion.yaml", [], "32-true", "cpu", steps=1)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            step_flops(module, batch, "32-true")
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
