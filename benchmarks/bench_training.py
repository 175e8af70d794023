"""Training throughput and peak memory of ``DiffusionModule`` through the Lightning Trainer: fp32 vs bf16-mixed.

Each (network, precision) case runs in a fresh subprocess: a ``Trainer`` (CPU, one device, no
logger or checkpoints) fits the real ``DiffusionModule`` (hybrid loss, loss-aware timestep
sampler, EMA update, AdamW) on in-memory synthetic images. Reported per case:

* images/s: batch size / median wall time of a training step (``on_train_batch_start`` to
  ``on_train_batch_end``: data transfer, forward, backward, optimizer, EMA), after warm-up steps;
* peak memory: the process's peak resident set size during the timed steps (``/proc/self/status``
  VmHWM after a reset through ``clear_refs`` at the end of warm-up; Linux), and in brackets its
  growth over the resident size after warm-up (activations, gradients and allocator slack on top
  of weights, optimizer state, EMA and the Python/torch runtime).

Networks (``guided_diffusion.presets.catalog``): ``mnist32_adm`` (the tiny MNIST preset, batch 32, 1
channel) and ``cifar32_adm`` (the 32px 11M config: channels 64, channel_mult 1,2,2,2, 2 res
blocks, attention at 16 and 8, 32 channels per head, learned sigma, AdaGN, up/down resblocks,
10 classes; batch 8).

Example::

    python benchmarks/bench_training.py --threads 2 --steps 10
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time

# benchmarks run as scripts, so sibling scripts are importable: one copy of the /proc memory helpers
from bench_unet import _reset_peak_rss, _status_mib

CASES = {  # name -> (preset, batch size)
    "mnist-tiny": ("mnist32_adm", 32),
    "32px-11M": ("cifar32_adm", 8),
}
PRECISIONS = ("32-true", "bf16-mixed")


def _run_case(preset: str, batch_size: int, precision: str, steps: int, warmup: int, threads: int, queue) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from guided_diffusion.data.datamodule import ImageDataModule
    from guided_diffusion.presets.catalog import get_preset
    from guided_diffusion.training import DiffusionModule

    torch.set_num_threads(threads)
    config = get_preset(preset).config

    class StepTimer(Callback):
        def __init__(self):
            self.times, self.base_rss, self.peak_source = [], None, "VmHWM"

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                self.base_rss = _status_mib("VmRSS")
                if not _reset_peak_rss():
                    self.peak_source = None
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx >= warmup:
                self.times.append(time.perf_counter() - self.start)

    L.seed_everything(0, verbose=False)
    module = DiffusionModule(network=preset, timestep_sampler="loss-second-moment")
    data = ImageDataModule(dataset="synthetic", image_size=config.image_size, channels=config.in_channels,
                           batch_size=batch_size, synthetic_size=batch_size * (steps + warmup),
                           synthetic_classes=config.num_classes or 1, val_fraction=0.0)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=steps + warmup, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    trainer.fit(module, data)
    step_time = statistics.median(timer.times)
    peak = _status_mib("VmHWM") if timer.peak_source and timer.base_rss else None
    queue.put({"images_per_s": batch_size / step_time, "step_s": step_time, "peak_mib": peak,
               "peak_growth_mib": peak - timer.base_rss if peak is not None else None,
               "params_m": sum(p.numel() for p in module.model.parameters()) / 1e6})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)

    context = mp.get_context("spawn")
    results: dict = {}
    for case in args.cases:
        preset, batch_size = CASES[case]
        for precision in PRECISIONS:
            queue = context.Queue()
            process = context.Process(target=_run_case, args=(preset, batch_size, precision, args.steps,
                                                              args.warmup, args.threads, queue))
            process.start()
            result = queue.get()
            process.join()
            results[(case, precision)] = result

    print(f"DiffusionModule training on CPU ({args.threads} threads), Lightning Trainer, median of {args.steps} "
          f"steps after {args.warmup} warm-up steps")
    header = (f"{'network':<12} {'params':>7} {'batch':>5} | {'fp32 img/s':>10} {'bf16 img/s':>10} {'bf16/fp32':>9} | "
              f"{'fp32 peak RSS MiB':>18} {'bf16 peak RSS MiB':>18}")
    print(header)
    print("-" * len(header))
    for case in args.cases:
        fp32, bf16 = results[(case, "32-true")], results[(case, "bf16-mixed")]
        peaks = [f"{r['peak_mib']:>9.0f} (+{r['peak_growth_mib']:>4.0f})" if r["peak_mib"] is not None
                 else f"{'n/a':>18}" for r in (fp32, bf16)]
        print(f"{case:<12} {fp32['params_m']:>6.1f}M {CASES[case][1]:>5} | {fp32['images_per_s']:>10.1f} "
              f"{bf16['images_per_s']:>10.1f} {bf16['images_per_s'] / fp32['images_per_s']:>9.2f} | "
              f"{peaks[0]:>18} {peaks[1]:>18}")
    if args.json:
        print(json.dumps({f"{case}/{precision}": r for (case, precision), r in results.items()}, indent=2))
    return results


if __name__ == "__main__":
    main()
