"""The GPU check a maintainer with one GPU runs in a few minutes (``benchmarks/gpu_check.sh``); it runs on CPU too.

On CUDA (defaults: the ``adm_imagenet64`` preset, batch 64 sampling, batch 16 training):

* train step images/s (forward + hybrid loss + backward + AdamW) in bf16 and fp16 autocast, eager
  and compiled, and the peak memory of each;
* classifier-guided DDIM-25 sampling images/s (``64_classifier``-shaped classifier, scale 1.0);
* the per-sample noise of one sampling step: one ``torch.Generator`` per sample (B calls) against the
  vectorised Philox streams (``--noise philox``, the default on accelerators);
* agreement of a bf16 forward with the fp32 forward (relative L2 error of eps), and of the
  fused-attention path with the float32 one.

One table is printed. ``--small`` (the default off CUDA) uses ``mnist32_adm`` / ``mnist32_classifier``, tiny
batches and 2 DDIM steps, so that the script itself is tested on CPU (``tests/test_speed_paths.py``).
Weights are random: the numbers are speed and numerics, not sample quality.
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.guidance import ClassifierGuidance
from guided_diffusion.nets import apply_fast_paths
from guided_diffusion.presets import get_preset
from guided_diffusion.noise import randn, sample_noise
from guided_diffusion.sampling import sample


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> str:
    if device.type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f}"


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _randomised(network: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # zero-initialised output layers would make every comparison trivially equal
        for p in network.parameters():
            p.add_(torch.randn_like(p), alpha=0.02)
    return network


def train_rate(preset, diffusion, device, dtype, compile_, batch, steps) -> tuple[float, str]:
    torch.manual_seed(0)
    model = apply_fast_paths(_randomised(preset.build()).to(device), compile_)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = preset.config
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, cfg.num_classes or 1, (batch,), device=device) if cfg.num_classes else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    times = []
    _reset_peak(device)
    for step in range(steps + 2):  # 2 warm-up steps (compilation)
        t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
        _synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype):
            loss = diffusion.training_losses(model, x, t, y=y)["loss"].mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        _synchronize(device)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return batch / (sum(times) / len(times)), _peak_mib(device)


def sampling_rate(preset, classifier_preset, diffusion, device, dtype, compile_, batch, steps) -> tuple[float, str]:
    torch.manual_seed(0)
    model = apply_fast_paths(_randomised(preset.build()).eval().requires_grad_(False).to(device), compile_)
    classifier = apply_fast_paths(_randomised(classifier_preset.build()).eval().requires_grad_(False).to(device),
                                  compile_)
    cfg = preset.config
    y = torch.randint(0, cfg.num_classes or 1, (batch,), device=device) if cfg.num_classes else None
    shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    context = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    with context:  # warm-up (and compilation) run, then the timed one
        sample(model, diffusion, shape, steps=f"ddim{steps}", y=y, guidance=ClassifierGuidance(classifier, 1.0),
               progress=False)
        _reset_peak(device)
        _synchronize(device)
        start = time.perf_counter()
        sample(model, diffusion, shape, steps=f"ddim{steps}", y=y, guidance=ClassifierGuidance(classifier, 1.0),
               progress=False)
        _synchronize(device)
    return batch / (time.perf_counter() - start), _peak_mib(device)


def noise_milliseconds(shape, device, kind: str, repeats: int = 20) -> float:
    """Milliseconds per sampling step's per-sample noise of a batch (``generators``: B ``randn`` calls; ``philox``:
    one vectorised draw)."""
    streams = sample_noise(0, range(shape[0]), device, kind=kind)
    randn(shape, streams, device)  # warm-up
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        randn(shape, streams, device)
    _synchronize(device)
    return 1000 * (time.perf_counter() - start) / repeats


def agreement(preset, diffusion, device, batch) -> dict[str, float]:
    """Relative L2 error against the fp32 output: bf16 autocast (default attention path), and the two
    attention paths under bf16."""
    from guided_diffusion.nets import layers

    torch.manual_seed(0)
    model = _randomised(preset.build()).eval().to(device)
    cfg = preset.config
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
    y = torch.randint(0, cfg.num_classes or 1, (batch,), device=device) if cfg.num_classes else None
    with torch.no_grad():
        reference = model(x, t, y).float()
        errors = {}
        original = layers.attention
        for name, path in (("bf16 (auto attention)", "auto"), ("bf16 fused attention", "fused"),
                           ("bf16 float32 attention", "float32")):
            layers.attention = lambda q, k, v, path=path: original(q, k, v, path=path)
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = model(x, t, y).float()
            finally:
                layers.attention = original
            errors[name] = float((out - reference).norm() / reference.norm())
    return errors


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=None,
                        help="tiny sizes (default: on when not on CUDA)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the compiled variants")
    parser.add_argument("--train_steps", type=int, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    small = (device.type != "cuda") if args.small is None else args.small
    preset = get_preset("mnist32_adm" if small else "adm_imagenet64")
    classifier_preset = get_preset("mnist32_classifier" if small else "64_classifier")
    train_batch, sample_batch, ddim_steps = (2, 2, 2) if small else (16, 64, 25)
    train_steps = args.train_steps or (2 if small else 10)
    diffusion = DiffusionConfig(steps=1000, noise_schedule=preset.diffusion.noise_schedule,
                                learn_sigma=preset.diffusion.learn_sigma).build()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check: {preset.name} + {classifier_preset.name} on {name}, torch {torch.__version__}")
    rows = []
    for compile_ in (False, True) if args.compile else (False,):
        for dtype in (torch.bfloat16, torch.float16):
            rate, peak = train_rate(preset, diffusion, device, dtype, compile_, train_batch, train_steps)
            rows.append((f"train step, batch {train_batch}", str(dtype).split(".")[-1], compile_, rate, peak))
        rate, peak = sampling_rate(preset, classifier_preset, diffusion, device, torch.bfloat16, compile_,
                                   sample_batch, ddim_steps)
        rows.append((f"guided DDIM-{ddim_steps}, batch {sample_batch}", "bfloat16", compile_, rate, peak))
    print(f"{'what':32s} {'dtype':>9s} {'compile':>8s} {'img/s':>9s} {'peak MiB':>9s}")
    for what, dtype, compile_, rate, peak in rows:
        print(f"{what:32s} {dtype:>9s} {str(compile_):>8s} {rate:9.2f} {peak:>9s}")
    shape = (sample_batch, preset.config.in_channels, preset.config.image_size, preset.config.image_size)
    for kind in ("generators", "philox"):
        milliseconds = noise_milliseconds(shape, device, kind)
        print(f"per-sample noise of one step, batch {sample_batch}, {kind:10s}: {milliseconds:8.3f} ms")
    for what, error in agreement(preset, diffusion, device, train_batch).items():
        print(f"agreement with fp32, {what:26s}: relative L2 error {error:.4e}")


if __name__ == "__main__":
    main()
