"""Learning curves of MNIST demo recipes: FID / accuracy / background against training time.

Trains a ``DiffusionModule`` on the embedded MNIST-5k through the Lightning Trainer (the same path
as ``gd fit``) and, at chosen optimizer steps, samples the EMA network *unguided* (the conditional
model alone: guidance is measured by ``gd demo``) with balanced labels and fixed per-sample seeds,
then scores the samples with the independent MNIST CNN of the evaluation suite:

- ``accuracy``: fraction recognised as the requested digit;
- ``fid``: FID in the CNN's 256-d features against the 500 held-out real digits (real vs real: 10.4);
- ``border``: mean of the 2-pixel frame of the 32x32 samples on the 0..255 scale (0 in the data).

Evaluation time is excluded from the training time. One JSON line per point goes to ``--out``.

    python benchmarks/demo_recipe.py --name old --config configs/mnist/diffusion.yaml \
        --steps 200,400,800 --num_eval 250
    python benchmarks/demo_recipe.py --name new --set '{"lr": 2e-3, "ema": {"schedule": "power"}}' ...

``--config`` trains the recipe of a ``gd fit`` YAML (through the CLI's own parser; ``--args`` adds
``gd fit`` overrides); without it, ``--set`` gives ``DiffusionModule`` arguments (JSON) and
``--network`` overrides fields of its network (default: the ``mnist32_adm`` preset).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class CurveEvaluator:
    """Samples the EMA model with fixed seeds at given steps and scores it (time excluded from training)."""

    def __init__(self, eval_steps, num_eval: int, sampler: str, steps: str, out: Path, name: str):
        from guided_diffusion.commands.demo import write_reference
        from guided_diffusion.evaluation.features import build_feature_extractor, extract_features

        self.eval_steps, self.num_eval, self.sampler, self.steps = sorted(eval_steps), num_eval, sampler, steps
        self.out, self.name = out, name
        self.extractor = build_feature_extractor("mnist")
        reference = np.load(write_reference(out.parent / "mnist_reference.npz"))["arr_0"]
        self.reference = extract_features(self.extractor, [torch.from_numpy(reference)])
        self.eval_seconds = 0.0

    def score(self, module, step: int, train_seconds: float, precision_context) -> dict:
        from guided_diffusion.commands.demo import frame_mean
        from guided_diffusion.evaluation.features import extract_features
        from guided_diffusion.evaluation.metrics import compute_metrics
        from guided_diffusion.images import to_uint8_nhwc

        started = time.perf_counter()
        labels = torch.arange(self.num_eval) % 10
        images = []
        for start in range(0, self.num_eval, 50):
            generator = torch.Generator().manual_seed(10_000 + start)
            with precision_context():
                x = module.sample(len(labels[start:start + 50]), labels[start:start + 50], sampler=self.sampler,
                                  steps=self.steps, generator=generator)
            images.append(to_uint8_nhwc(x.float().cpu()))
        images = torch.cat(images)
        features = extract_features(self.extractor, [images])
        metrics = compute_metrics(self.reference, features, metrics=("fid",))
        row = {"name": self.name, "step": step, "train_seconds": round(train_seconds, 1),
               "accuracy": float((features["logits"].argmax(1) == labels.numpy()).mean()),
               "fid": metrics["fid"].value, "border": frame_mean(images.numpy()),
               "num_eval": self.num_eval, "sampler": self.sampler, "steps": self.steps,
               "ema_decay": float(module.ema.get_decay()) if hasattr(module, "ema") else None}
        self.eval_seconds += time.perf_counter() - started
        with open(self.out, "a") as file:
            file.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        stem = re.sub(r"[^\w.-]+", "_", self.name).strip("_")  # a recipe name may hold '/', ':' or spaces
        np.save(self.out.with_name(f"{stem}-{step}.npy"), images.numpy()[:100])
        return row


def plot_curves(path: Path, names: list[str], output: Path) -> None:
    """FID, accuracy and border against training time, one line per recipe name, from a curves file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    for name in names:
        points = sorted((row for row in rows if row["name"] == name), key=lambda row: row["step"])
        minutes = [row["train_seconds"] / 60 for row in points]
        for axis, key in zip(axes, ("fid", "accuracy", "border")):
            axis.plot(minutes, [row[key] for row in points], marker="o", label=name)
    for axis, title in zip(axes, ("FID, MNIST-CNN features (real: 10.4)", "recognised as the requested digit",
                                  "mean of the 2-px frame (data: 0)")):
        axis.set_xlabel("training minutes (2 CPU cores)")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=2, fontsize=8)
    figure.tight_layout(rect=(0, 0.16, 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    print(f"wrote {output}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="the recipe's name in the curves file")
    parser.add_argument("--plot", nargs="*", default=None, metavar="NAME",
                        help="plot these recipes of --out into --plot_output instead of training")
    parser.add_argument("--plot_output", default="docs/demo_learning_curve.png")
    parser.add_argument("--config", default=None, help="a gd fit YAML (its model, data, clipping are used)")
    parser.add_argument("--args", action="append", default=[], help="a gd fit override with --config, "
                        "repeatable (e.g. --args=--model.init_args.lr=2e-3)")
    parser.add_argument("--set", default="{}", help="JSON overrides of DiffusionModule arguments")
    parser.add_argument("--network", default="{}", help="JSON overrides of network fields")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--steps", default="200,400,800", help="optimizer steps at which to evaluate")
    parser.add_argument("--num_eval", type=int, default=250)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--sampling_steps", default="ddim25")
    parser.add_argument("--precision", default="auto",
                        help="auto: bf16-mixed where the CPU has native bf16, else 32-true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip", type=float, default=None, help="trainer.gradient_clip_val")
    parser.add_argument("--out", default="outputs/recipes/curves.jsonl")
    args = parser.parse_args(argv)
    if args.plot is not None:
        return plot_curves(Path(args.out), args.plot, Path(args.plot_output))
    if not args.name:
        parser.error("--name is required to train")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")

    import lightning as L
    from lightning.pytorch import Callback

    from guided_diffusion.data.datamodule import ImageDataModule
    from guided_diffusion.training import DiffusionModule

    module_args, data_args = {}, {"dataset": "mnist", "image_size": 32, "batch_size": 32}
    module_args.update(json.loads(args.set))
    network_overrides = json.loads(args.network)
    if network_overrides:
        network = module_args.get("network", "mnist32_adm")
        if isinstance(network, str):
            from guided_diffusion.presets.catalog import get_preset

            network = get_preset(network).config.to_dict()
        module_args["network"] = {**network, **network_overrides}
    if args.batch_size:
        data_args["batch_size"] = args.batch_size
    eval_steps = [int(s) for s in args.steps.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    evaluator = CurveEvaluator(eval_steps, args.num_eval, args.sampler, args.sampling_steps, out, args.name)

    class Curve(Callback):
        def on_train_start(self, trainer, pl_module):
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step in evaluator.eval_steps:
                evaluator.eval_steps.remove(trainer.global_step)
                seconds = time.perf_counter() - self.started - evaluator.eval_seconds
                evaluator.score(pl_module, trainer.global_step, seconds, trainer.precision_plugin.forward_context)

    from guided_diffusion.launch import resolve_precision

    precision = resolve_precision(args.precision)
    clip = args.clip
    if args.config:  # the recipe of a gd fit config, through the CLI's own parser (+ gd fit overrides)
        from guided_diffusion.commands.fit import load_recipe

        module, data, settings = load_recipe(args.config, args.args)
        clip = settings.get("gradient_clip_val", clip)
        description = f"config {args.config} {' '.join(args.args)}"
    else:
        module, data = DiffusionModule(**module_args), ImageDataModule(**data_args)
        description = f"module {module_args}; data {data_args}"
    L.seed_everything(args.seed, verbose=False)
    print(f"[{args.name}] {sum(p.numel() for p in module.model.parameters()) / 1e6:.2f}M parameters; "
          f"{description}", flush=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=max(eval_steps),
                        logger=False, callbacks=[Curve()], limit_val_batches=0, num_sanity_val_steps=0,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        gradient_clip_val=clip)
    trainer.fit(module, data)


if __name__ == "__main__":
    main()
