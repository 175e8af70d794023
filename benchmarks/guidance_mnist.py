"""Where and how much to guide, on the demo's MNIST models: plain classifier guidance at several scales against
guidance intervals, a scale schedule and gradient reuse, each scored as ``gd demo`` scores (the MNIST CNN's
accuracy on the requested digit, FID against the 500 held-out digits) with its cost per sample.

    make demo                                   # trains outputs/demo/{diffusion,classifier}.ckpt
    python benchmarks/guidance_mnist.py --demo outputs/demo --output outputs/guidance

Every point samples the same 500 class-balanced samples (seed 0, DDIM-15 as the demo) through ``gd sweep``;
the table (markdown) and all rows go to ``OUTPUT/guidance.json``. Times are sampling seconds per sample
(``gd sample``'s cost line), relative to the unguided point of the same run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guided_diffusion.atomic import atomic_write_json  # noqa: E402
from guided_diffusion.commands.sweep import point_label, sweep  # noqa: E402

#: (name, sweep options): plain ADM guidance first (its scale 0 is the unguided baseline).
GROUPS = [
    ("plain", dict(scales=[0.0, 3.0, 4.0, 6.0])),
    ("interval t in [300, 900]", dict(scales=[4.0, 6.0, 8.0], intervals=["300,900"])),
    ("interval t in [400, 800]", dict(scales=[6.0, 8.0], intervals=["400,800"])),
    ("linear schedule", dict(scales=[4.0], schedules=["linear"])),
    ("gradient reuse, every 2", dict(scales=[4.0], guidance_every=2)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="outputs/demo", help="a gd demo output (diffusion.ckpt, classifier.ckpt, "
                        "mnist_reference.npz)")
    parser.add_argument("--output", default="outputs/guidance")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--steps", default="ddim15")
    parser.add_argument("--groups", default=",".join(str(i) for i in range(len(GROUPS))),
                        help="indices of GROUPS to run")
    args = parser.parse_args()
    demo, output = Path(args.demo), Path(args.output)
    for name in ("diffusion.ckpt", "classifier.ckpt", "mnist_reference.npz"):
        if not (demo / name).is_file():
            raise SystemExit(f"{demo / name} is missing: run `make demo` (or gd demo --output {demo}) first")
    rows = []
    for index in (int(i) for i in args.groups.split(",")):
        group, options = GROUPS[index]
        summary = sweep(str(demo / "diffusion.ckpt"), str(demo / "mnist_reference.npz"), str(output / f"group-{index}"),
                        classifier=str(demo / "classifier.ckpt"), classes="all", num_samples=args.num_samples,
                        batch_size=50, seed=0, steps=[args.steps], features="mnist", accelerator="cpu",
                        progress=False, **options)
        rows += [{**row, "group": group} for row in summary["rows"]]
        atomic_write_json(output / "guidance.json", {"rows": rows})
    unguided = next((row for row in rows if row["scale"] == 0.0), None)
    lines = ["| setting | accuracy | FID | classifier evaluations / sample | ms / sample | vs unguided |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        ratio = row["seconds_per_sample"] / unguided["seconds_per_sample"] if unguided else float("nan")
        lines.append(f"| {row['group']}: {point_label(row)} | {100 * row['accuracy']:.1f}% | {row['fid']:.1f} | "
                     f"{row['classifier_evaluations']:g} | {1000 * row['seconds_per_sample']:.0f} | {ratio:.2f}x |")
    table = "\n".join(lines)
    print(table)
    atomic_write_json(output / "guidance.json", {"rows": rows, "table": table})


if __name__ == "__main__":
    main()
