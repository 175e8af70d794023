"""Throughput and peak memory of a preset network on CPU: fp32 vs bf16 autocast, +/- checkpointing.

Reported per mode:

* forward: a ``torch.no_grad`` forward pass (the cost of one network evaluation when sampling);
* train step: forward + loss + backward (no optimiser update): the training cost per batch;
* peak memory: increase of the peak resident set size during one train step, in a fresh process
  per mode, after a warm-up train step (one-time allocations) with the gradients freed: it covers
  the activations kept for backward, the gradients and temporaries. On Linux the kernel's peak-RSS
  mark (``VmHWM`` in ``/proc/self/status``) is reset through ``/proc/self/clear_refs`` just before
  the measured step, and glibc is told to mmap blocks >= 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so
  that freed memory leaves the RSS; elsewhere ``resource.getrusage(...).ru_maxrss`` is used
  (rough: it is never reset and, after a spawn, starts from the parent's peak).

Timing runs all modes round-robin in one process (one step of each mode per round) and reports
the median and the minimum over the rounds, so that load from other processes on a shared machine
affects all modes alike; ratios are relative to the first mode's median.

The loss is the diffusion core's ``training_losses(...)["loss"].mean()`` (improved DDPM's hybrid
L_simple + L_vlb for learned-variance models) when :mod:`guided_diffusion.diffusion` is
importable, otherwise a stand-in (MSE on the eps channels plus a small term on the variance
channels). The zero-initialised output convolutions are re-initialised (PyTorch default init) so
that the output, and the fp32-vs-bf16 loss comparison, depend on every layer.

Example::

    python benchmarks/bench_unet.py --preset cifar32_adm --batch-size 8 --threads 2
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time

MODES = {  # name -> (autocast dtype or None, gradient checkpointing)
    "fp32": (None, False),
    "bf16": ("bfloat16", False),
    "fp32+ckpt": (None, True),
    "bf16+ckpt": ("bfloat16", True),
}


def _make_loss(preset, model):
    """``loss(x0, t, y) -> scalar`` from the diffusion core if available, else a stand-in."""
    import torch

    try:
        from guided_diffusion.diffusion import DiffusionConfig
    except ImportError:
        DiffusionConfig = None
    if DiffusionConfig is not None:
        diffusion = DiffusionConfig(**preset.diffusion.to_dict()).build()

        def loss(x0, t, y, noise):
            return diffusion.training_losses(model, x0, t, y=y, noise=noise)["loss"].mean()

        return loss, "diffusion.training_losses(...)['loss'].mean() (hybrid L_simple + L_vlb)"

    steps, s = preset.diffusion.steps, 0.008
    grid = torch.arange(steps + 1, dtype=torch.float64) / steps
    alpha_bar = torch.cos((grid + s) / (1 + s) * torch.pi / 2) ** 2
    alpha_bar = (alpha_bar[1:] / alpha_bar[0]).float()
    channels = preset.config.in_channels

    def loss(x0, t, y, noise):
        a = alpha_bar[t].view(-1, 1, 1, 1)
        out = model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y).float()
        value = (out[:, :channels] - noise).pow(2).mean()
        return value + 1e-3 * out[:, channels:].pow(2).mean() if out.shape[1] > channels else value

    return loss, "stand-in (MSE on eps + 1e-3 * mean(v^2))"


class Bench:
    """One mode: a model (shared weights across modes), fixed inputs, forward and train-step closures."""

    def __init__(self, args, mode, state_dict=None):
        import torch

        from guided_diffusion.presets.catalog import get_preset

        dtype_name, use_checkpoint = MODES[mode]
        self.preset = preset = get_preset(args.preset)
        torch.manual_seed(0)
        self.model = model = preset.build(use_checkpoint=use_checkpoint).train()
        if state_dict is None:
            for module in model.modules():  # undo the zero init of output convs
                weight = getattr(module, "weight", None)
                if isinstance(module, torch.nn.Conv2d) and weight is not None and not weight.any():
                    module.reset_parameters()
        else:
            model.load_state_dict(state_dict)
        config, batch = preset.config, args.batch_size
        generator = torch.Generator().manual_seed(1)
        self.x0 = torch.rand(batch, config.in_channels, config.image_size, config.image_size,
                             generator=generator) * 2 - 1
        self.noise = torch.randn(self.x0.shape, generator=generator)
        self.t = torch.randint(0, preset.diffusion.steps, (batch,), generator=generator)
        num_classes = getattr(config, "num_classes", None)
        self.y = torch.randint(0, num_classes, (batch,), generator=generator) if num_classes else None
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
            self.x0 = self.x0.contiguous(memory_format=torch.channels_last)
        self.loss_fn, self.loss_name = _make_loss(preset, model)
        self.dtype = getattr(torch, dtype_name) if dtype_name else None

    def _autocast(self):
        import torch

        return torch.autocast("cpu", dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def forward(self):
        import torch

        with torch.no_grad(), self._autocast():
            return self.model(self.x0, self.t, self.y)

    def train_step(self) -> float:
        import torch

        self.model.zero_grad(set_to_none=True)
        torch.manual_seed(2)  # dropout masks, if any
        with self._autocast():
            value = self.loss_fn(self.x0, self.t, self.y, self.noise)
        value.backward()
        return float(value.detach())


def _status_mib(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` (e.g. ``VmRSS``, ``VmHWM``) in MiB; None if unavailable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_memory(args, mode, queue):
    import gc

    import torch

    torch.set_num_threads(args.threads)
    bench = Bench(args, mode)
    bench.train_step()  # warm-up: one-time allocations (oneDNN primitives, autograd engine, ...)
    bench.model.zero_grad(set_to_none=True)
    gc.collect()
    if _reset_peak_rss() and _status_mib("VmHWM") is not None:
        base = _status_mib("VmRSS")
        bench.train_step()
        queue.put((_status_mib("VmHWM") - base, "VmHWM"))
    else:  # ru_maxrss is never reset (and includes the parent's peak on Linux): a rough fallback
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        bench.train_step()
        queue.put(((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, "ru_maxrss"))


def _measure_memory(args, modes):
    context = mp.get_context("spawn")
    peaks, source = {}, None
    # Large blocks are mmap-ed and returned to the OS when freed, so RSS follows live memory.
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        for mode in modes:
            queue = context.Queue()
            process = context.Process(target=_peak_memory, args=(args, mode, queue))
            process.start()
            process.join()
            if process.exitcode != 0:
                raise SystemExit(f"memory measurement of mode {mode} failed (exit code {process.exitcode})")
            peaks[mode], source = queue.get()
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_")
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    return peaks, source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar32_adm", help="network preset (guided_diffusion.presets.catalog)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (one step of every mode each)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)}")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {list(MODES)}")

    import torch

    torch.set_num_threads(args.threads)
    benches = {}
    for mode in modes:
        first = next(iter(benches.values()), None)
        benches[mode] = Bench(args, mode, None if first is None else first.model.state_dict())
    losses = {mode: bench.train_step() for mode, bench in benches.items()}
    forward_s = {mode: [] for mode in modes}
    train_s = {mode: [] for mode in modes}
    for round_ in range(args.warmup + args.rounds):
        for mode, bench in benches.items():
            start = time.perf_counter()
            bench.forward()
            middle = time.perf_counter()
            bench.train_step()
            end = time.perf_counter()
            if round_ >= args.warmup:
                forward_s[mode].append(middle - start)
                train_s[mode].append(end - middle)
    peaks, memory_source = ({}, None) if args.no_memory else _measure_memory(args, modes)

    bench = benches[modes[0]]
    params = sum(p.numel() for p in bench.model.parameters())
    print(f"preset {args.preset} ({params / 1e6:.2f}M parameters), batch {args.batch_size}, {args.threads} "
          f"threads, channels_last={args.channels_last}, torch {torch.__version__}")
    print(f"loss: {bench.loss_name}")
    print(f"times: median (min) over {args.rounds} round-robin rounds; peak memory: increase of the peak RSS "
          f"({memory_source}) during one train step, fresh process per mode")
    header = (f"{'mode':<10} {'fwd ms':>15} {'fwd img/s':>10} {'train ms':>15} {'train img/s':>12} "
              f"{'speed-up':>9} {'peak MiB':>9} {'loss':>9} {'loss rel.':>10}")
    print(header)
    print("-" * len(header))
    base_train, base_loss = statistics.median(train_s[modes[0]]), losses[modes[0]]
    for mode in modes:
        fwd, train = statistics.median(forward_s[mode]), statistics.median(train_s[mode])
        peak = f"{peaks[mode]:9.1f}" if mode in peaks else f"{'-':>9}"
        print(f"{mode:<10} {fwd * 1e3:7.1f} ({min(forward_s[mode]) * 1e3:5.1f}) {args.batch_size / fwd:10.1f} "
              f"{train * 1e3:7.1f} ({min(train_s[mode]) * 1e3:5.1f}) {args.batch_size / train:12.1f} "
              f"{base_train / train:8.2f}x {peak} {losses[mode]:9.5f} "
              f"{abs(losses[mode] - base_loss) / abs(base_loss):10.2e}")


if __name__ == "__main__":
    main()
