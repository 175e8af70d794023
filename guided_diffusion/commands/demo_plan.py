"""The demo's presets and its plan: how many training steps and samples fill a wall-clock budget on this machine.

A demo sized in steps is sized for one machine: the same 380 steps take the whole 12 minutes on a
CPU without native bf16 and a third of them on one with AVX512-BF16. ``gd demo`` therefore plans
by time:

1. :func:`measure_rates` times, at start, a few training steps of each network through the
   Lightning Trainer (the path the training takes: forward, backward, AdamW, EMA) and the
   network evaluations sampling makes (a model forward, a classifier gradient), at the demo's
   precision: about 10 s on 2 AVX2 cores, less where the machine is faster;
2. the rates are **rounded to the machine's class** (:func:`machine_class`): a class with a
   calibrated reference (:data:`CLASS_RATES`) plans with the reference's rates whenever the
   measured ones are within :data:`CLASS_SLOWER` / :data:`CLASS_FASTER` of it, so every machine of the class gets the
   same plan (and the same figures); otherwise each rate is rounded up to the next rung of a
   ladder of ratio 2^(1/8) (:func:`ladder_round`), so two machines a few percent apart mostly agree;
3. :func:`plan_demo` (a pure function of the budget, the rates and the rows to sample) gives the
   training time that is left after the fixed costs, the measured start and sampling
   (:func:`sampling_seconds`), :data:`DIFFUSION_SHARE` of it to the diffusion model and the rest to
   the classifier (at most :data:`CLASSIFIER_MAX_STEPS`; the remainder goes back to the diffusion
   model), with step counts rounded down to two significant digits. Values the user gives
   (``--diffusion_steps`` ...) are kept and the rest is planned around them.

The plan is printed, written to ``plan.json`` (a re-run of the same request reuses it, so a
resumed run trains to the same step) and recorded in ``results.json``. The learning-rate anneal
follows the planned steps (``train_from_config``) and the power-function EMA averages the last
~10% of any run length, so both follow the plan.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch

from ..diffusion.schedules import space_timesteps
from ..guidance.levels import parse_interval
from ..launch import native_bf16

MachineClass = Literal["cpu-fp32", "cpu-bf16", "cuda"]

#: Share of the training time given to the diffusion model (the classifier gets the rest). Measured on the demo's
#: models: 400 instead of 200 classifier steps took scale 3 from 80.4% / FID 108 to 85.2% / FID 85 (docs/demo.md).
DIFFUSION_SHARE = 0.7
#: The classifier's steps are capped (it converges long before the diffusion model); the time left goes back to the
#: diffusion model.
CLASSIFIER_MAX_STEPS = 1000
#: Seconds the plan keeps for what it does not measure: W&B and Trainer set-up, checkpoint writes, loading the
#: networks for each row, features and metrics (calibrated on 2 AVX2 cores: docs/demo.md).
FIXED_SECONDS = 35.0
#: Fraction of the budget kept back against noise in the measurement and on the machine.
MARGIN = 0.04
#: The fewest training steps a plan gives a network (a budget too short for them is overrun, with a warning).
MIN_STEPS = 50
#: Sampling batch of the demo (its rates are measured at this batch).
SAMPLING_BATCH = 50
#: Measured rates at most this much slower than the class's reference plan with the reference (a slower machine
#: would overrun the budget by about the difference, less the margin) ...
CLASS_SLOWER = 1.10
#: ... and at most this much faster (it finishes early by about the difference).
CLASS_FASTER = 1.25


@dataclasses.dataclass(frozen=True)
class DemoPreset:
    """How long ``gd demo`` trains, how much it samples and how it guides (the recipe itself is in ``configs/mnist``).

    Args:
        budget_minutes: wall-clock minutes of the whole command; the steps and the sample count are planned to fill
            it on this machine (:mod:`.demo_plan`). None: the fixed values below.
        diffusion_steps: training steps of the diffusion model (None: planned).
        classifier_steps: training steps of the noise-aware classifier (None: planned).
        num_samples: samples per row, classes balanced (None: planned; FID needs hundreds).
        scales: classifier-guidance scales to sample and score; scale 0 is the conditional model alone.
        default_scale: the scale whose grid is shown and whose accuracy CI checks.
        guidance_interval: ``"lo,hi"``: the guided rows evaluate the classifier only for t in it (None: every step).
        guide_scale: autoguidance weight w of the guided rows (None: no autoguidance): the model is guided by its
            own checkpoint at ``guide_fraction`` of the run (Karras et al. 2024; no extra training).
        guide_interval: ``"lo,hi"``: the guide is evaluated only for t in it (None: every step).
        guide_fraction: where in the run that checkpoint is taken.
        sampler: sampler of ``gd sample``.
        steps: its steps / respacing.
    """

    budget_minutes: Optional[float] = None
    diffusion_steps: Optional[int] = None
    classifier_steps: Optional[int] = None
    num_samples: Optional[int] = None
    scales: tuple[float, ...] = (0.0, 3.0)
    default_scale: float = 3.0
    guidance_interval: Optional[str] = None
    guide_scale: Optional[float] = None
    guide_interval: Optional[str] = None
    guide_fraction: float = 0.4
    sampler: str = "ddim"
    steps: str = "ddim15"


DEMO_PRESETS: dict[str, DemoPreset] = {
    # the main job: 12 minutes on any machine; autoguidance by its own early checkpoint with classifier guidance in
    # the middle of the schedule (the best setting per unit of time measured on the demo's models: docs/demo.md)
    "default": DemoPreset(budget_minutes=12.0, scales=(0.0, 12.0), default_scale=12.0, guidance_interval="400,800",
                          guide_scale=2.0, guide_interval="300,1000"),
    # ADM's plain classifier guidance on the same recipe trained longer, 1000 samples per scale at DDIM-20
    "long": DemoPreset(diffusion_steps=2000, classifier_steps=800, num_samples=1000, steps="ddim20"),
}


@dataclasses.dataclass(frozen=True)
class Rates:
    """Seconds per unit of work, at the demo's batch sizes and precision.

    Args:
        diffusion_step: one training step of the diffusion model (its config's batch), through the Trainer.
        classifier_step: one training step of the noise-aware classifier (its config's batch).
        model_forward: one evaluation of the diffusion network on a sampling batch (no gradient).
        classifier_gradient: one classifier gradient d log p(y | x_t) / d x_t on a sampling batch.
        start: seconds from the start of the process to the end of the measurement (imports included).
    """

    diffusion_step: float
    classifier_step: float
    model_forward: float
    classifier_gradient: float
    start: float

    def rounded(self) -> "Rates":
        """Each rate rounded up to its ladder rung (:func:`ladder_round`)."""
        return Rates(**{name: ladder_round(value) for name, value in dataclasses.asdict(self).items()})

    def within(self, reference: "Rates", slower: float, faster: float) -> bool:
        """Whether every rate is at most ``slower`` times the reference's and at least ``1 / faster`` times it (the
        start is not compared: a cold import cache is not another machine)."""
        return all(1 / faster <= getattr(self, name) / value <= slower
                   for name, value in dataclasses.asdict(reference).items() if name != "start")


#: Reference rates of machine classes, measured with :func:`measure_rates` from a fresh clone (docs/demo.md):
#: ``cpu-fp32``: 2 cores of an AMD EPYC with AVX2 only (no native bf16, so fp32).
CLASS_RATES: dict[str, Rates] = {
    "cpu-fp32": Rates(diffusion_step=0.65, classifier_step=0.31, model_forward=0.33, classifier_gradient=0.165,
                      start=20.0),
}


def machine_class(accelerator: str = "cpu") -> MachineClass:
    """The class of this machine for planning: ``cuda``, ``cpu-bf16`` (native bf16) or ``cpu-fp32``."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    return "cpu-bf16" if native_bf16() else "cpu-fp32"


def ladder_round(seconds: float, ratio: float = 2 ** 0.125) -> float:
    """``seconds`` rounded up to the ladder ``ratio ** k`` (k an integer; to 6 significant digits): 0.61 and 0.64 s
    both give 0.648420 s."""
    if seconds <= 0:
        raise ValueError(f"a rate must be positive, got {seconds}")
    return float(f"{ratio ** math.ceil(math.log(seconds, ratio) - 1e-4):.6g}")  # 6 digits: 32, not 31.99999999999998


def round_down(value: float, digits: int = 2) -> int:
    """``value`` rounded down to ``digits`` significant digits (473.9 -> 470, 1288 -> 1200)."""
    if value < 1:
        return 0
    unit = 10 ** max(int(math.floor(math.log10(value))) - digits + 1, 0)
    return int(value // unit * unit)


@dataclasses.dataclass(frozen=True)
class SampledRow:
    """What one row of the demo samples, for its cost.

    Args:
        steps: the sampler's respacing (``ddim15``).
        classifier: whether the classifier guides this row.
        classifier_interval: ``"lo,hi"`` in t where the classifier is evaluated (None: every step).
        guide: whether the row is autoguided (one more network evaluation per step) ...
        guide_interval: ... for t in ``"lo,hi"`` only (None: every step).
    """

    steps: str
    classifier: bool
    classifier_interval: Optional[str] = None
    guide: bool = False
    guide_interval: Optional[str] = None

    def evaluations(self, num_timesteps: int = 1000) -> tuple[int, int]:
        """``(network evaluations, classifier gradients)`` per sample."""
        timesteps = space_timesteps(num_timesteps, self.steps)

        def inside(interval: Optional[str]) -> int:
            window = parse_interval(interval)
            return len(timesteps) if window is None else sum(window[0] <= t <= window[1] for t in timesteps)

        return (len(timesteps) + (inside(self.guide_interval) if self.guide else 0),
                inside(self.classifier_interval) if self.classifier else 0)


def sampling_seconds(rates: Rates, rows: Sequence[SampledRow], num_samples: int) -> float:
    """Predicted seconds to sample ``num_samples`` per row, in batches of :data:`SAMPLING_BATCH`."""
    batches = math.ceil(num_samples / SAMPLING_BATCH)
    total = 0.0
    for row in rows:
        forwards, gradients = row.evaluations()
        total += batches * (forwards * rates.model_forward + gradients * rates.classifier_gradient)
    return total


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """What the demo trains and samples, and why (every field goes to ``plan.json`` and ``results.json``).

    Args:
        machine: the machine class (:func:`machine_class`).
        budget_seconds: the wall-clock budget of the whole command (None: not planned, the values were given).
        measured: the rates measured at start (None when nothing was planned).
        rates: the rates the plan used: the class's reference (``rates_from == "class"``) or the measured ones
            rounded to the ladder (``"measured"``).
        rates_from: ``class``, ``measured`` or ``none``.
        diffusion_steps: training steps of the diffusion model.
        classifier_steps: training steps of the classifier.
        num_samples: samples per row.
        guide_step: the diffusion model's step whose weights guide it (autoguidance), or None.
        predicted: predicted seconds: ``start`` (before planning, measurement included), ``training``, ``sampling``,
            ``fixed`` and ``total``.
        given: the values the user gave (kept by the plan).
        warning: why the plan cannot keep its budget (None: it can).
    """

    machine: str
    budget_seconds: Optional[float]
    measured: Optional[Rates]
    rates: Optional[Rates]
    rates_from: Literal["class", "measured", "none"]
    diffusion_steps: int
    classifier_steps: int
    num_samples: int
    guide_step: Optional[int]
    predicted: dict
    given: dict
    warning: Optional[str] = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "DemoPlan":
        data = dict(data)
        for key in ("measured", "rates"):
            data[key] = Rates(**data[key]) if data.get(key) else None
        return cls(**data)

    def describe(self) -> str:
        """The plan in two lines, as printed."""
        if self.budget_seconds is None:
            head = f"[demo] plan ({self.machine}): the given steps and samples, no budget"
        else:
            rates = self.rates
            head = (f"[demo] plan for {self.budget_seconds / 60:g} min on this machine ({self.machine}; rates from "
                    f"{'the class reference' if self.rates_from == 'class' else 'the measurement, rounded'}: "
                    f"{rates.diffusion_step:.3g} s per diffusion step, {rates.classifier_step:.3g} s per classifier "
                    f"step, {rates.model_forward:.3g} s per network evaluation of {SAMPLING_BATCH} samples)")
        predicted = self.predicted
        body = (f"[demo]   {self.diffusion_steps} diffusion steps, {self.classifier_steps} classifier steps, "
                f"{self.num_samples} samples per row")
        if self.guide_step:
            body += f", guided by its own step {self.guide_step}"
        if predicted:
            body += (f"; predicted {predicted['training']:.0f} s training + {predicted['sampling']:.0f} s sampling "
                     f"+ {predicted['start'] + predicted['fixed']:.0f} s the rest = {predicted['total']:.0f} s")
        return f"{head}\n{body}" + (f"\n[demo] warning: {self.warning}" if self.warning else "")


def guide_step_of(diffusion_steps: int, fraction: Optional[float]) -> Optional[int]:
    """The step of the guide checkpoint: ``fraction`` of the run (rounded to 10 from step 10 on; between 1 and
    ``diffusion_steps - 1``), or None (no guide)."""
    if not fraction or diffusion_steps < 2:
        return None
    step = diffusion_steps * fraction
    step = int(round(step / 10)) * 10 if step >= 10 else int(round(step))
    return min(max(step, 1), diffusion_steps - 1)


def plan_demo(budget_seconds: float, rates: Rates, rows: Sequence[SampledRow], *,
              machine: str, measured: Optional[Rates] = None, rates_from: str = "measured",
              diffusion_steps: Optional[int] = None, classifier_steps: Optional[int] = None,
              num_samples: Optional[int] = None, guide_fraction: Optional[float] = None,
              fixed_seconds: float = FIXED_SECONDS, margin: float = MARGIN) -> DemoPlan:
    """The steps and samples that fill ``budget_seconds`` (a pure function: see the module's docstring).

    ``rates.start`` seconds have passed before the plan (imports, measurement). ``num_samples``: 500 per row, or
    1000 where sampling 1000 per row costs at most a tenth of the budget. Raises ``ValueError`` (one line) when the
    budget cannot hold the fixed costs, sampling and 50 steps of each network.
    """
    given = {name: value for name, value in (("diffusion_steps", diffusion_steps),
                                             ("classifier_steps", classifier_steps),
                                             ("num_samples", num_samples)) if value is not None}
    if num_samples is None:
        num_samples = 1000 if sampling_seconds(rates, rows, 1000) <= budget_seconds / 10 else 500
    sampling = sampling_seconds(rates, rows, num_samples)
    start = rates.start
    training = budget_seconds * (1 - margin) - start - fixed_seconds - sampling
    fixed_training = (diffusion_steps or 0) * rates.diffusion_step + (classifier_steps or 0) * rates.classifier_step
    free = training - fixed_training
    minimum = MIN_STEPS * ((diffusion_steps is None) * rates.diffusion_step + (classifier_steps is None) *
                           rates.classifier_step)
    warning = None
    if free < minimum:  # run anyway (a loaded or slow machine): the least that shows anything, and say so
        warning = (f"a budget of {budget_seconds / 60:g} min is too short on this machine (sampling {num_samples} "
                   f"per row ~{sampling:.0f} s, start and fixed costs ~{start + fixed_seconds:.0f} s): training "
                   f"{MIN_STEPS} steps of each network instead, over the budget (--budget_minutes, --num_samples)")
        diffusion_steps, classifier_steps = diffusion_steps or MIN_STEPS, classifier_steps or MIN_STEPS
    if diffusion_steps is None and classifier_steps is None:
        classifier_steps = min(round_down(free * (1 - DIFFUSION_SHARE) / rates.classifier_step), CLASSIFIER_MAX_STEPS)
        diffusion_steps = round_down((free - classifier_steps * rates.classifier_step) / rates.diffusion_step)
    elif diffusion_steps is None:
        diffusion_steps = round_down(free / rates.diffusion_step)
    elif classifier_steps is None:
        classifier_steps = min(round_down(free / rates.classifier_step), CLASSIFIER_MAX_STEPS)
    training_seconds = diffusion_steps * rates.diffusion_step + classifier_steps * rates.classifier_step
    predicted = {"start": round(start, 1), "training": round(training_seconds, 1),
                 "sampling": round(sampling, 1), "fixed": fixed_seconds,
                 "total": round(start + training_seconds + sampling + fixed_seconds, 1)}
    return DemoPlan(machine, budget_seconds, measured, rates, rates_from, diffusion_steps, classifier_steps,
                    num_samples, guide_step_of(diffusion_steps, guide_fraction), predicted, given, warning)


def class_rates(machine: str, measured: Rates) -> tuple[Rates, str]:
    """The rates to plan with: the class's reference if the measurement agrees with it, else the measured rates
    rounded to the ladder."""
    reference = CLASS_RATES.get(machine)
    if reference is not None and measured.within(reference, CLASS_SLOWER, CLASS_FASTER):
        return reference, "class"
    return measured.rounded(), "measured"


# ---------------------------------------------------------------------------------------------------- measuring
def _fastest(values: Sequence[float]) -> float:
    """The fastest of repeated timings: what the machine does when nothing else interferes (a busy moment at start
    would otherwise plan a different run; the costs the fastest leaves out are in :data:`FIXED_SECONDS`)."""
    return min(values)


def time_training_steps(config: str | Path, overrides: Sequence[str], precision: str, accelerator: str,
                        steps: int = 4, warmup: int = 2):
    """Seconds of a training step of ``config`` through the Trainer (the fastest of ``steps``; no logger, checkpoints
    or validation), the module it trained (for :func:`time_evaluations`) and the batch size."""
    import lightning as L
    from lightning.pytorch import Callback

    from .fit import load_recipe

    class StepTimer(Callback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.seconds.append(time.perf_counter() - self.started)

    module, data, settings = load_recipe(config, [*overrides, f"--trainer.max_steps={warmup + steps}"])
    settings.pop("precision", None)
    timer = StepTimer()
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer], **settings)
    trainer.fit(module, data)
    return _fastest(timer.seconds[warmup:]), module, data.batch_size


def time_evaluations(diffusion_module, classifier_module, precision: str, repeats: int = 4) -> tuple[float, float]:
    """Seconds of one diffusion-network forward and one classifier gradient on a sampling batch (the fastest of
    ``repeats``)."""
    device = next(diffusion_module.parameters()).device
    network, classifier = diffusion_module.ema_model, classifier_module.model
    config = diffusion_module.config
    x = torch.randn(SAMPLING_BATCH, config.in_channels, config.image_size, config.image_size, device=device)
    t = torch.full((SAMPLING_BATCH,), 500, device=device)
    y = torch.arange(SAMPLING_BATCH, device=device) % max(config.num_classes or 1, 1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))

    def forward():
        with torch.no_grad(), autocast:
            network(x, t, y=y if config.num_classes else None)

    def gradient():
        with torch.enable_grad(), autocast:
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(classifier(x_in, t).float(), dim=-1)
            torch.autograd.grad(log_probs[torch.arange(SAMPLING_BATCH), y].sum(), x_in)

    seconds = []
    for work in (forward, gradient):
        work()  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        seconds.append(_fastest(times))
    return seconds[0], seconds[1]


def measure_rates(diffusion_config: str | Path, classifier_config: str | Path, precision: str,
                  accelerator: str = "cpu", diffusion_overrides: Sequence[str] = (),
                  classifier_overrides: Sequence[str] = ()) -> Rates:
    """The :class:`Rates` of this machine for the demo's two configs (a few steps of each; nothing is written)."""
    import logging

    import lightning as L

    L.seed_everything(0, verbose=False)
    chatter = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in chatter]
    for logger in chatter:  # the Trainers of the measurement say nothing (the runs that follow do)
        logger.setLevel(logging.ERROR)
    try:
        diffusion_step, diffusion, _ = time_training_steps(diffusion_config, diffusion_overrides, precision,
                                                           accelerator)
        classifier_step, classifier, _ = time_training_steps(classifier_config, classifier_overrides, precision,
                                                             accelerator)
    finally:
        for logger, level in zip(chatter, levels):
            logger.setLevel(level)
    diffusion.eval(), classifier.eval()
    forward, gradient = time_evaluations(diffusion, classifier, precision)
    return Rates(diffusion_step, classifier_step, forward, gradient, start=process_seconds())


def process_seconds() -> float:
    """Seconds since this process started (Linux ``/proc``; elsewhere 0): the budget counts imports too."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def read_plan(path: Path, request: dict) -> Optional[DemoPlan]:
    """The plan recorded at ``path`` for the same ``request`` (budget, given values, configs), or None."""
    try:
        recorded = json.loads(path.read_text())
        return DemoPlan.from_json(recorded["plan"]) if recorded.get("request") == request else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
