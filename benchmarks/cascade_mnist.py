"""A guided MNIST cascade (ADM-G + ADM-U at demo scale) against the 32 px demo model.

Trains, with the demo's recipes (``configs/mnist``) and ``gd demo``'s trainer, a 16 px base model and
a 16 px noise-aware classifier on the embedded MNIST-5k at 16 px (the 32 px layout area-downsampled)
and the 16 -> 32 upsampler of ``configs/mnist/upsampler.yaml``; then ``gd sweep --upsampler`` samples
the cascade at each guidance scale (classes balanced, DDIM in both stages) and scores the 32 px
outputs exactly as ``gd demo`` scores its model: the independent MNIST CNN's accuracy and FID against
the 500 held-out real digits. One JSON summary goes to ``OUTPUT/cascade.json``.

    python benchmarks/cascade_mnist.py --output outputs/cascade --seed 0

Compare with ``gd demo --seed 0`` (same scales, sampler, steps, sample count and seed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guided_diffusion.commands.demo import (CONFIGS, DEMO_PRESETS, frame_mean, train_from_config,  # noqa: E402
                                            write_reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/cascade")
    parser.add_argument("--seed", type=int, default=0)
    # the demo's fixed sizes before it planned by time (docs/sampling.md's figures were measured with them)
    parser.add_argument("--base_steps", type=int, default=380)
    parser.add_argument("--classifier_steps", type=int, default=320)
    parser.add_argument("--upsampler_steps", type=int, default=500)
    parser.add_argument("--scales", default="0,3")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--sampling_steps", default=DEMO_PRESETS["default"].steps)
    args = parser.parse_args()

    import numpy as np

    from guided_diffusion.launch import resolve_precision
    from guided_diffusion.commands.sweep import sweep

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision("auto")
    at16 = ["--data.image_size=16", "--model.init_args.network.image_size=16"]
    timings = {}
    started = time.perf_counter()
    base, _ = train_from_config(CONFIGS / "diffusion.yaml", out, "base16", args.base_steps, overrides=at16,
                                precision=precision, wandb="disabled", seed=args.seed)
    timings["base16"] = time.perf_counter() - started
    started = time.perf_counter()
    classifier, _ = train_from_config(CONFIGS / "classifier.yaml", out, "classifier16", args.classifier_steps,
                                      overrides=at16, precision=precision, wandb="disabled", seed=args.seed)
    timings["classifier16"] = time.perf_counter() - started
    started = time.perf_counter()
    upsampler, _ = train_from_config(CONFIGS / "upsampler.yaml", out, "upsampler", args.upsampler_steps,
                                     precision=precision, wandb="disabled", seed=args.seed)
    timings["upsampler"] = time.perf_counter() - started
    reference = write_reference(out / "mnist_reference.npz")
    started = time.perf_counter()
    swept = sweep(str(base), str(reference), str(out / "sweep"), scales=[float(s) for s in args.scales.split(",")],
                  samplers=["ddim"], steps=[args.sampling_steps], classifier=str(classifier), classes="all",
                  num_samples=args.num_samples, batch_size=50, seed=args.seed, precision=precision,
                  accelerator="cpu", features="mnist", upsampler=str(upsampler), progress=False)
    timings["sampling"] = time.perf_counter() - started
    rows = swept["rows"]
    for row in rows:
        row["border"] = frame_mean(np.load(row["samples"])["arr_0"])
    summary = {"seed": args.seed, "base_steps": args.base_steps, "classifier_steps": args.classifier_steps,
               "upsampler_steps": args.upsampler_steps, "precision": precision,
               "seconds": {k: round(v, 1) for k, v in timings.items()},
               "rows": [{k: row[k] for k in ("scale", "accuracy", "fid", "precision", "recall", "border",
                                             "seconds", "samples")} for row in rows]}
    (out / "cascade.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
