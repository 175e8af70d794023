"""The guidance frontier on the demo's MNIST models: autoguidance, CADS, an off-the-shelf classifier and
training-free guidance beside the best plain and interval classifier guidance, over sampling seeds.

    make demo                                                    # outputs/demo/{diffusion,classifier}.ckpt
    python benchmarks/guidance_frontier.py --train_guides       # the guide models and the clean classifier
    python benchmarks/guidance_frontier.py --settings best --seeds 0,1,2

``--train_guides`` trains, with the demo's own recipe (``configs/mnist``) and seed, the weaker models
autoguidance needs and the clean-image classifier: ``short100`` (the demo's diffusion recipe stopped at 100 steps,
its learning-rate schedule following), ``narrow190`` (channel multipliers (1, 1, 1) instead of (1, 2, 2), 190
steps) and ``clean_classifier`` (``configs/mnist/clean_classifier.yaml``, clean images). Every setting samples the
same 500 class-balanced samples per seed (DDIM-15, as the demo) through ``gd sweep`` and is scored as the demo
scores (the MNIST CNN's accuracy on the requested digit, FID in its features against the 500 held-out digits).
The table (markdown: mean and per-seed values, network evaluations and ms per sample) and every row go to
``OUTPUT/frontier.json``. ``--settings scan`` runs the scan at one seed from which the best settings were picked.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guided_diffusion.atomic import atomic_write_json  # noqa: E402
from guided_diffusion.commands.sweep import COST_COLUMNS, sweep  # noqa: E402

GUIDES = {"short100": (100, []), "narrow190": (190, ["--model.init_args.network.channel_mult=[1,1,1]"])}

#: name -> sweep options (files: ``{demo}``, ``{guides}`` are filled in); the scan at one seed, then the best.
SCAN = {
    "autoguidance short100": dict(scales=[0.0], guide_model="{guides}/short100.ckpt", guide_scale=[2.0, 3.0]),
    "autoguidance narrow190": dict(scales=[0.0], guide_model="{guides}/narrow190.ckpt", guide_scale=[2.0]),
    "autoguidance short100 + interval [400, 800]": dict(
        scales=[8.0, 12.0], intervals=["400,800"], guide_model="{guides}/short100.ckpt", guide_scale=[1.5, 2.0]),
    "CADS + interval [400, 800]": dict(scales=[8.0], intervals=["400,800"], cads_noise=[0.1, 0.25]),
    "off-the-shelf clean classifier": dict(scales=[4.0, 8.0], classifier="{guides}/clean_classifier.ckpt"),
    "off-the-shelf clean classifier + interval [400, 800]": dict(scales=[8.0], intervals=["400,800"],
                                                                 classifier="{guides}/clean_classifier.ckpt"),
    "training-free DPS": dict(scales=[1.0], classifier="{guides}/clean_classifier.ckpt", guidance="training-free",
                              tfg_rho=[5.0, 10.0, 20.0]),
    "training-free MPGD": dict(scales=[1.0], classifier="{guides}/clean_classifier.ckpt", guidance="training-free",
                               tfg_mu=[5.0, 20.0, 50.0]),
    "autoguidance short100 + training-free DPS": dict(
        scales=[1.0], classifier="{guides}/clean_classifier.ckpt", guidance="training-free", tfg_rho=[10.0],
        guide_model="{guides}/short100.ckpt", guide_scale=[2.0]),
}
#: The best setting of each kind in the scan (by FID; among FIDs within 1 of the best, the higher accuracy), run at
#: every seed, then plain and interval classifier guidance at their best (docs/guidance.md) for comparison.
BEST = {
    "autoguidance short100 + interval [400, 800]": dict(
        scales=[12.0], intervals=["400,800"], guide_model="{guides}/short100.ckpt", guide_scale=[2.0]),
    "autoguidance short100": dict(scales=[0.0], guide_model="{guides}/short100.ckpt", guide_scale=[2.0]),
    "training-free DPS": dict(scales=[1.0], classifier="{guides}/clean_classifier.ckpt", guidance="training-free",
                              tfg_rho=[20.0]),
    "training-free MPGD": dict(scales=[1.0], classifier="{guides}/clean_classifier.ckpt", guidance="training-free",
                               tfg_mu=[50.0]),
    "off-the-shelf clean classifier": dict(scales=[4.0], classifier="{guides}/clean_classifier.ckpt"),
    "CADS + interval [400, 800]": dict(scales=[8.0], intervals=["400,800"], cads_noise=[0.25]),
    "autoguidance short100 + training-free DPS": dict(
        scales=[1.0], classifier="{guides}/clean_classifier.ckpt", guidance="training-free", tfg_rho=[10.0],
        guide_model="{guides}/short100.ckpt", guide_scale=[2.0]),
    "classifier guidance": dict(scales=[0.0, 4.0]),
    "interval classifier guidance": dict(scales=[8.0], intervals=["400,800"]),
}


def train_guides(demo: Path, guides: Path) -> None:
    from guided_diffusion.commands.demo import train_from_config

    config = Path(__file__).resolve().parents[1] / "configs" / "mnist"
    for name, (steps, overrides) in GUIDES.items():
        train_from_config(config / "diffusion.yaml", guides, name, steps, overrides=overrides, wandb="disabled")
    train_from_config(config / "clean_classifier.yaml", guides, "clean_classifier", 150, wandb="disabled")


def expand(options: dict, demo: Path, guides: Path) -> list[dict]:
    """One sweep's options per value of each listed option (the sweep itself sweeps ``scales`` / ``intervals``)."""
    fixed = {k: v.format(demo=demo, guides=guides) if isinstance(v, str) else v for k, v in options.items()}
    listed = [k for k, v in fixed.items() if isinstance(v, list) and k not in ("scales", "intervals")]
    if not listed:
        return [fixed]
    key = listed[0]
    return [point for value in fixed[key] for point in expand({**fixed, key: value}, demo, guides)]


def run(settings: dict[str, dict], seeds: list[int], demo: Path, guides: Path, output: Path, num_samples: int,
        steps: str) -> list[dict]:
    rows = []
    for name, options in settings.items():
        for variant in expand(options, demo, guides):
            tag = "-".join(f"{k}{v}" for k, v in sorted(variant.items()) if k not in ("scales", "intervals")
                           and not isinstance(v, str) or k in ("guidance",))
            for seed in seeds:
                out = output / f"{name.replace(' ', '_').replace('/', '')}-{tag}-seed{seed}"
                variant_options = {"classifier": str(demo / "classifier.ckpt"), **variant}
                summary = sweep(str(demo / "diffusion.ckpt"), str(demo / "mnist_reference.npz"), str(out),
                                classes="all", num_samples=num_samples, batch_size=50, seed=seed, steps=[steps],
                                features="mnist", accelerator="cpu", progress=False, **variant_options)
                for row in summary["rows"]:
                    rows.append({**row, "setting": name, "seed": seed,
                                 **{k: v for k, v in variant.items() if k not in ("scales", "intervals")}})
                atomic_write_json(output / "frontier.json", {"rows": rows})
    return rows


def table(rows: list[dict]) -> str:
    """Mean (and per-seed) accuracy and FID of each setting and point, with its cost per sample."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["setting"], row["scale"], row["interval"],
               tuple((k, row.get(k)) for k in ("guide_scale", "cads_noise", "tfg_rho", "tfg_mu") if row.get(k)))
        groups.setdefault(key, []).append(row)
    lines = ["| setting | accuracy (mean; per seed) | FID (mean; per seed) | model / guide / classifier evaluations "
             "per sample | ms / sample |", "|---|---|---|---|---|"]
    for (setting, scale, interval, extra), group in groups.items():
        accuracy = [100 * row["accuracy"] for row in group]
        fid = [row["fid"] for row in group]
        shown = [name for name in COST_COLUMNS if name != "model_gradient_evaluations"]
        timed = [row for row in group if row.get("seconds_per_sample") is not None]  # a resumed point sampled nothing
        costs = " / ".join(f"{timed[0][name]:g}" for name in shown) if timed else "–"
        label = f"{setting}: s={scale:g}" + (f" [{interval}]" if interval not in (None, "none") else "") + "".join(
            f" {k}={v:g}" for k, v in extra)
        milliseconds = f"{1000 * statistics.mean(row['seconds_per_sample'] for row in timed):.0f}" if timed else "–"
        lines.append(f"| {label} | {statistics.mean(accuracy):.1f}% ({' / '.join(f'{a:.1f}' for a in accuracy)}) | "
                     f"{statistics.mean(fid):.1f} ({' / '.join(f'{f:.1f}' for f in fid)}) | {costs} | "
                     f"{milliseconds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="outputs/demo")
    parser.add_argument("--guides", default="outputs/frontier/guides")
    parser.add_argument("--output", default="outputs/frontier")
    parser.add_argument("--train_guides", action="store_true")
    parser.add_argument("--settings", default="best", help="scan, best, or names of SCAN / BEST separated by ;")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--steps", default="ddim15")
    args = parser.parse_args()
    demo, guides, output = Path(args.demo), Path(args.guides), Path(args.output)
    for name in ("diffusion.ckpt", "classifier.ckpt", "mnist_reference.npz"):
        if not (demo / name).is_file():
            raise SystemExit(f"{demo / name} is missing: run `make demo` (or gd demo --output {demo}) first")
    if args.train_guides:
        train_guides(demo, guides)
        return
    known = {**SCAN, **BEST}
    settings = SCAN if args.settings == "scan" else BEST if args.settings == "best" else {
        name: known[name] for name in args.settings.split(";")}
    rows = run(settings, [int(s) for s in args.seeds.split(",")], demo, guides, output, args.num_samples, args.steps)
    text = table(rows)
    print(text)
    atomic_write_json(output / "frontier.json", {"rows": rows, "table": text})


if __name__ == "__main__":
    main()
