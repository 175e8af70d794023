"""What a sampling run is asked to do: the option groups of ``gd sample`` / ``gd upsample`` and the requests made
of them.

A request is complete and checked when it is made (every group validates itself), before any file is read;
``gd sweep`` and ``gd demo`` make sample requests from their own (``dataclasses.replace`` of a group), so an
option added to a group here appears in every command that samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..guidance import GuidanceOptions
from ..guidance.training_free import TRAINING_FREE_SAMPLERS
from ..launch import LaunchOptions
from ..noise import NOISE_KINDS, NoiseKind
from ..option_groups import check_choices
from ..sampling.options import SamplerOptions
from ..sampling.registry import SamplerName
from ..tracking import TrackingOptions


@dataclass(frozen=True)
class OutputOptions:
    """Output: where the run writes and what it shows.

    Args:
        output: directory of the run (shards, ``run.json``, the merged ``.npz``, ``grid.png``).
        grid: write ``grid.png`` of the first samples.
        progress: show progress bars.
        overwrite: write into a directory whose sample files (``samples_*.npz``, ``grid.png``, shards) no
            ``run.json`` claims (by default they are someone else's and the run is refused).
    """

    output: str = "outputs/samples"
    grid: bool = True
    progress: bool = True
    overwrite: bool = False


@dataclass(frozen=True)
class NetworkFiles:
    """Networks: how the network files are read (the diffusion model is the first argument).

    Args:
        preset: network preset of an OpenAI ``.pt`` (default: detected from its keys).
        ema: use the EMA weights of a ``.ckpt`` (``false``: the raw training weights).
        classifier: classifier for classifier guidance: noise-aware (``.ckpt`` or OpenAI ``.pt``), or one of clean
            images (a ``.ckpt`` trained with ``noised: false``, or timm weights with ``--classifier_arch``), which
            guides through the predicted x_0 (off-the-shelf guidance); also the objective of training-free guidance.
        classifier_preset: network preset of an OpenAI classifier ``.pt`` (default: detected).
        classifier_arch: the timm architecture of a plain weight file given as ``--classifier`` (e.g.
            ``resnet18``; built without downloading anything, its weights read from the file): a clean classifier.
        guide_model: the weaker model of the same task that guides the model (autoguidance, ``--guide_scale``): an
            earlier checkpoint of the same run or a smaller network, any file ``--checkpoint`` accepts.
        model_flags: guided-diffusion's MODEL_FLAGS (``"--image_size 64 --num_channels 192 ..."``), checked
            against the model file (the reference's commands run as they are).
        classifier_flags: its CLASSIFIER_FLAGS, checked against the classifier file.
    """

    preset: Optional[str] = None
    ema: bool = True
    classifier: Optional[str] = None
    classifier_preset: Optional[str] = None
    classifier_arch: Optional[str] = None
    guide_model: Optional[str] = None
    model_flags: Optional[str] = None
    classifier_flags: Optional[str] = None

    def __post_init__(self):
        from .reference_flags import parse_flags

        parse_flags(self.model_flags, "unet")
        parse_flags(self.classifier_flags, "encoder_unet")
        if self.classifier_flags and self.classifier is None:
            raise ValueError("--classifier_flags without a classifier (--classifier / --classifier_path)")
        if self.classifier_arch is not None and self.classifier is None:
            raise ValueError("--classifier_arch names the architecture of --classifier FILE: give the file")


@dataclass(frozen=True)
class PlanOptions:
    """Samples: how many, with which labels and which noise.

    Args:
        num_samples: how many samples in total (``gd upsample``: default all the input's images).
        batch_size: samples per shard and per forward pass (any value gives the same images).
        classes: ``all`` (cycle 0..K-1), ``random`` (uniform, as the reference) or ``"3"`` / ``"1,7,9"``.
        seed: sample i depends only on (seed, i).
        noise: per-sample noise streams: ``generators`` (a ``torch.Generator`` per sample), ``philox``
            (counter-based Philox streams, the batch in one vectorised draw) or ``auto`` (``philox`` on
            accelerators, ``generators`` on CPU). Part of the run's identity.
    """

    num_samples: Optional[int] = 100
    batch_size: int = 25
    classes: str = "all"
    seed: int = 0
    noise: NoiseKind = "auto"

    def __post_init__(self):
        if self.batch_size < 1 or (self.num_samples is not None and self.num_samples < 1):
            raise ValueError(f"num_samples and batch_size must be positive, got {self.num_samples} and "
                             f"{self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer (a SeedSequence entropy), got {self.seed}")
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {', '.join(NOISE_KINDS)}, got {self.noise!r}")


@dataclass(frozen=True)
class CascadeOptions:
    """Cascade: a super-resolution stage after the base model (ADM-G + ADM-U).

    Args:
        upsampler: a super-resolution model (``.ckpt`` or OpenAI ``.pt``, low-res size = the base model's image
            size): sample a cascade; the base samples are kept in ``output/low_res``.
        upsampler_preset: network preset of an OpenAI upsampler ``.pt`` (default: detected).
        upsampler_sampler: the upsampler's sampler (default: ``--sampler``; ``--eta`` applies to DDIM in both).
        upsampler_steps: the upsampler's respacing (default: ``--steps`` when the samplers agree, else the
            sampler's default).
    """

    upsampler: Optional[str] = None
    upsampler_preset: Optional[str] = None
    upsampler_sampler: Optional[SamplerName] = None
    upsampler_steps: Optional[str] = None

    def __post_init__(self):
        check_choices(self)
        if self.upsampler is None and (self.upsampler_preset or self.upsampler_sampler or self.upsampler_steps):
            raise ValueError("--upsampler_preset, --upsampler_sampler and --upsampler_steps need --upsampler CKPT")

    def sampler_of(self, base: SamplerOptions) -> SamplerOptions:
        """The upsampler's sampler options, from the base stage's."""
        name = self.upsampler_sampler or base.sampler
        steps = self.upsampler_steps
        if steps is None and name == base.sampler:
            steps = base.resolved_steps
        return SamplerOptions(name, steps, base.eta if name == "ddim" else 0.0,
                              base.order if name == base.sampler else None, base.clip_denoised)


@dataclass(frozen=True)
class ConditionOptions:
    """Conditions: controllable generation with the model (inpainting, colorization).

    Args:
        inpaint: ``.npz`` with ``arr_0`` (uint8 NHWC) and ``mask`` (1 = keep): fill in the rest; sample i
            completes image i mod N.
        colorize: ``.npz`` with ``arr_0`` grey (or RGB) images: colour images with that grey.
    """

    inpaint: Optional[str] = None
    colorize: Optional[str] = None

    def __post_init__(self):
        if self.inpaint and self.colorize:
            raise ValueError("--inpaint and --colorize are exclusive")

    @property
    def path(self) -> Optional[str]:
        return self.inpaint or self.colorize


@dataclass(frozen=True)
class SampleRequest:
    """A ``gd sample`` run.

    Args:
        checkpoint: the diffusion model: this project's ``.ckpt`` or a released OpenAI ``.pt``.
    """

    checkpoint: str
    output: OutputOptions = field(default_factory=OutputOptions)
    networks: NetworkFiles = field(default_factory=NetworkFiles)
    guidance: GuidanceOptions = field(default_factory=GuidanceOptions)
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    plan: PlanOptions = field(default_factory=PlanOptions)
    cascade: CascadeOptions = field(default_factory=CascadeOptions)
    condition: ConditionOptions = field(default_factory=ConditionOptions)
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)

    def __post_init__(self):
        if self.plan.num_samples is None:
            raise ValueError("gd sample needs --num_samples N")
        self.guidance.check(has_classifier=self.networks.classifier is not None,
                            has_guide=self.networks.guide_model is not None)
        if self.guidance.guidance == "training-free" and self.sampler.sampler not in TRAINING_FREE_SAMPLERS:
            raise ValueError(f"training-free guidance steps with {' or '.join(TRAINING_FREE_SAMPLERS)} (it shifts each "
                             f"step's x_0 and repeats steps), not {self.sampler.sampler}")


@dataclass(frozen=True)
class UpsampleRequest:
    """A ``gd upsample`` run.

    Args:
        low_res: ``.npz`` with ``arr_0`` uint8 NHWC images of the upsampler's low-res size and, for a
            class-conditional upsampler, ``arr_1`` labels (``gd sample`` writes this layout).
        upsampler: the super-resolution model: this project's ``.ckpt`` or a released OpenAI ``.pt``.
    """

    low_res: str
    upsampler: str
    output: OutputOptions = field(default_factory=lambda: OutputOptions("outputs/upsampled"))
    networks: NetworkFiles = field(default_factory=NetworkFiles)
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    plan: PlanOptions = field(default_factory=lambda: PlanOptions(num_samples=None))
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)


__all__ = ["OutputOptions", "NetworkFiles", "PlanOptions", "CascadeOptions", "ConditionOptions", "SampleRequest",
           "UpsampleRequest"]
