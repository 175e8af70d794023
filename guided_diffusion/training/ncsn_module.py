"""``NCSNModule``: Lightning training of a noise-conditional score network (NCSN, Song & Ermon 2019/2020).

Thin glue over :mod:`guided_diffusion.sde.ncsn`, on the same ADM UNet, data, CLI, EMA and
checkpoint layout as :class:`~guided_diffusion.training.DiffusionModule`:

- **noise levels** (:func:`~guided_diffusion.sde.ncsn.ncsn_sigmas`): geometric sigma_1 > ... > sigma_L,
  sigma_1 = the largest Euclidean distance between training images (Technique 1; computed at
  ``setup`` from the datamodule's training set when ``sigma_max`` is not given), the ratio gamma from
  the data dimension D (Technique 2: overlap 0.5 between neighbouring levels), sigma_L = ``sigma_min``.
  The resolved ``sigma_max`` and ``num_scales`` are written into the hyper-parameters, so
  checkpoints carry the exact levels and ``--ckpt_path`` runs rebuild them without the data.
- **loss** (:func:`~guided_diffusion.sde.ncsn.ncsn_loss`): denoising score matching with
  lambda(sigma) = sigma^2, per example 1/2 |sigma s_theta(x + sigma z, sigma) + z|^2 summed over
  dimensions, sigma uniform over the L levels;
- **network** (:class:`~guided_diffusion.sde.ncsn.NoiseConditionalScoreNetwork`):
  s_theta(x, sigma) = -UNet(x / sqrt(1 + sigma^2), t) / sigma (NCSNv2's 1/sigma output scaling).

**Timestep mapping.** The UNet takes integer timesteps. Level i (i = 0 for sigma_1 = sigma_max,
i = L - 1 for sigma_L = sigma_min) is shown to the UNet as

    t = L - 1 - i     (so t = 0 is the least noise, as in DDPM, and t = L - 1 the most),

which is the VE SDE's model time (N - 1) log(sigma / sigma_min) / log(sigma_max / sigma_min) with
N = L: the network is the VE score model ``VESDE(sigma_min, sigma_max, N=L)`` on which the levels
are the grid times t / (L - 1). Between levels (SDE samplers, the probability-flow ODE) the UNet
gets the same formula as a fractional timestep (its sinusoidal embedding takes any real t).
Per-"quartile" logs (``loss_q0`` ... ``loss_q3``) split this t axis: q0 = the smallest sigmas.

**Sampling** (:meth:`NCSNModule.sample`, EMA weights): annealed Langevin dynamics over the L levels,
x <- x + alpha_i / 2 s(x, sigma_i) + sqrt(alpha_i) z with alpha_i = eps sigma_i^2 / sigma_L^2,
``steps_per_level`` steps per level, eps from Technique 4 unless given, and a final denoising
step (Tweedie); the VE SDE samplers (``pc``, ``reverse-diffusion``, ``euler-maruyama``, ``ode``)
work on the same network.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal, Optional

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..nets import UNetConfig
from ..presets import config_from_dict, get_preset
from ..sde.ncsn import (
    NoiseConditionalScoreNetwork,
    geometric_sigmas,
    langevin_step_size,
    max_pairwise_distance,
    ncsn_loss,
    ncsn_sigmas,
)
from ..sde.registry import SCORE_SAMPLERS, ScoreSamplerName
from .base import TrainingModule
from .diffusion_module import to_uint8_nhwc
from .ema import EMA, EmaOptions
from .loss_stats import QuartileMeans

NCSNSampler = ScoreSamplerName
NCSN_SAMPLERS = tuple(SCORE_SAMPLERS)  # every sampler of a score model (guided_diffusion.sde.registry)


def resolve_ncsn_network(network: UNetConfig | str | dict) -> UNetConfig:
    """The UNet config of an NCSN: eps/score output only (a preset's learned-sigma channels are dropped)."""
    if isinstance(network, str):
        preset = get_preset(network)
        if preset.kind != "unet":
            raise ValueError(f"preset {network!r} is a {preset.kind!r} network; NCSNModule trains 'unet' presets")
        network = dataclasses.replace(preset.config, learn_sigma=False, out_channels=None)
    elif isinstance(network, dict):
        network = config_from_dict("unet", network)
    if not isinstance(network, UNetConfig):
        raise TypeError(f"network must be a UNetConfig, its dict form or a preset name, got {type(network).__name__}")
    if network.is_super_resolution:
        raise ValueError("NCSNModule trains base models: super-resolution (low_res_size) is not supported")
    if network.learn_sigma or network.resolved_out_channels != network.in_channels:
        raise ValueError(f"an NCSN predicts only the score: set network.learn_sigma: false (got learn_sigma="
                         f"{network.learn_sigma}, {network.resolved_out_channels} output channels for "
                         f"{network.in_channels} input channels)")
    if network.null_class:
        raise ValueError("NCSNModule has no label dropout: set network.null_class: false")
    return network


def check_noise_range(sigma_min: float, sigma_max: Optional[float], num_scales: Optional[int]) -> None:
    """Early, named errors for a bad noise-level configuration."""
    if not isinstance(sigma_min, (int, float)) or not math.isfinite(sigma_min) or sigma_min <= 0:
        raise ValueError(f"sigma_min must be a positive number, got {sigma_min!r}")
    if sigma_max is not None:
        if not isinstance(sigma_max, (int, float)) or not math.isfinite(sigma_max) or sigma_max <= 0:
            raise ValueError(f"sigma_max must be a positive number (or null: the largest distance between training "
                             f"images), got {sigma_max!r}")
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max must be above sigma_min, got sigma_max={sigma_max} <= sigma_min={sigma_min}")
    if num_scales is not None and (not isinstance(num_scales, int) or num_scales < 2):
        raise ValueError(f"num_scales must be an integer >= 2 (or null: from the overlap rule), got {num_scales!r}")


#: The EMA of an NCSN unless configured: NCSNv2's rate 0.999 (with the warm-up).
NCSN_EMA = EmaOptions(rate=0.999)


class NCSNModule(TrainingModule):
    """Train a noise-conditional score network (NCSN / NCSNv2) on the ADM UNet.

    Validation, sampling and prediction use the EMA weights. Checkpoints hold the network config,
    the resolved noise levels (``sigma_min``, ``sigma_max``, ``num_scales`` in ``hyper_parameters``),
    the weights (``model.*``) and the EMA (``ema.module.*``), so
    :func:`~guided_diffusion.training.load_ncsn_checkpoint` rebuilds the score network with no flags.

    Args:
        network: the UNet (``UNetConfig`` fields, ``learn_sigma: false``), or a preset name (its
            learned-sigma channels are dropped).
        sigma_max: sigma_1; ``None`` = the largest Euclidean distance between training images
            (Technique 1), computed at setup.
        sigma_min: sigma_L (0.01 for images in [-1, 1]).
        num_scales: L; ``None`` = the fewest levels whose ratio gamma keeps ``overlap`` (Technique 2).
        overlap: the Technique-2 overlap of neighbouring levels (0.5 in the paper).
        max_data_points: for ``sigma_max = None``, the distance is taken over at most this many
            training images (a seeded random subset of bigger datasets: then a lower bound).
        scale_input: feed the UNet x / sqrt(1 + sigma^2) (the VP-equivalent input) rather than x.
        lr: AdamW learning rate (NCSNv2: 1e-4).
        weight_decay: AdamW weight decay.
        lr_warmup_steps: linear LR warm-up steps (0 = none).
        lr_anneal_steps: decay the LR linearly to 0 over this many steps (0 = constant).
        ema: the EMA of the weights used for validation and sampling (:class:`EmaOptions`, or a dict of
            its fields read over this default: NCSNv2's rate 0.999, with the warm-up
            min(rate, (1 + n) / (10 + n)) at the n-th update).
        max_consecutive_nonfinite: stop after this many consecutive non-finite losses.
        sampler: sampler of :meth:`sample` and ``predict`` (default annealed Langevin).
        steps_per_level: Langevin steps per noise level (T) of annealed Langevin.
        step_size: eps of alpha_i = eps sigma_i^2 / sigma_L^2; ``None`` = Technique 4 for T and gamma.
        compile: ``torch.compile`` the network (and its EMA copy) in place when training starts.
        channels_last: NHWC memory order for the convolutions.
    """

    def __init__(self, network: UNetConfig | str = "mnist32_adm", sigma_max: Optional[float] = None,
                 sigma_min: float = 0.01, num_scales: Optional[int] = None, overlap: float = 0.5,
                 max_data_points: int = 10000, scale_input: bool = True, lr: float = 1e-4, weight_decay: float = 0.0,
                 lr_warmup_steps: int = 0, lr_anneal_steps: int = 0, ema: EmaOptions = NCSN_EMA,
                 max_consecutive_nonfinite: int = 10, sampler: NCSNSampler = "annealed-langevin",
                 steps_per_level: int = 5, step_size: Optional[float] = None, compile: bool = False,
                 channels_last: bool = False):
        super().__init__(lr, weight_decay, lr_warmup_steps, lr_anneal_steps, max_consecutive_nonfinite,
                         compile=compile, channels_last=channels_last)
        config = resolve_ncsn_network(network)
        check_noise_range(sigma_min, sigma_max, num_scales)
        if not 0 < overlap < 1:
            raise ValueError(f"overlap must lie in (0, 1), got {overlap}")
        if not isinstance(max_data_points, int) or max_data_points < 2:
            raise ValueError(f"max_data_points must be an integer >= 2, got {max_data_points!r}")
        self._check_sampling(sampler, steps_per_level, step_size)
        ema = EmaOptions.coerce(ema, default=NCSN_EMA)
        # Plain values only: checkpoints load with weights_only=True. ``setup`` fills in the resolved
        # sigma_max / num_scales, so a checkpoint (and ``--ckpt_path`` runs) carry the exact levels.
        self.save_hyperparameters(dict(
            _class_path=f"{type(self).__module__}.{type(self).__qualname__}",
            network=config.to_dict(), sigma_max=None if sigma_max is None else float(sigma_max),
            sigma_min=float(sigma_min), num_scales=num_scales, overlap=overlap, max_data_points=max_data_points,
            scale_input=scale_input, lr=lr, weight_decay=weight_decay, lr_warmup_steps=lr_warmup_steps,
            lr_anneal_steps=lr_anneal_steps, ema=dataclasses.asdict(ema),
            max_consecutive_nonfinite=max_consecutive_nonfinite))
        # (sampling settings are left out, as in DiffusionModule: they are chosen at sampling time)
        self.config = config
        self.sigma_min, self.sigma_max, self.num_scales = float(sigma_min), sigma_max, num_scales
        self.overlap, self.max_data_points, self.scale_input = overlap, max_data_points, scale_input
        self.sampler, self.steps_per_level, self.step_size = sampler, steps_per_level, step_size
        self.model = config.build()
        self.ema = EMA.from_options(self.model, ema)
        self.sigmas: Optional[torch.Tensor] = None
        self.eval_metrics: Optional[QuartileMeans] = None
        if sigma_max is not None:
            self._set_levels(float(sigma_max))

    @staticmethod
    def _check_sampling(sampler: str, steps_per_level: int, step_size: Optional[float]) -> None:
        if sampler not in NCSN_SAMPLERS:
            raise ValueError(f"unknown NCSN sampler {sampler!r}; expected one of {', '.join(NCSN_SAMPLERS)}")
        if not isinstance(steps_per_level, int) or isinstance(steps_per_level, bool) or steps_per_level < 1:
            raise ValueError(f"steps_per_level must be a positive integer, got {steps_per_level!r}")
        if step_size is not None and (not isinstance(step_size, (int, float)) or not math.isfinite(step_size)
                                      or step_size <= 0):
            raise ValueError(f"the Langevin step size must be a positive number (or null: Technique 4), "
                             f"got {step_size!r}")

    # ------------------------------------------------------------------ noise levels
    @property
    def ema_model(self) -> torch.nn.Module:
        """The EMA UNet (what sampling and validation use)."""
        return self.ema.module

    @property
    def num_classes(self) -> Optional[int]:
        return self.config.num_classes

    @property
    def data_dim(self) -> int:
        return self.config.in_channels * self.config.image_size ** 2

    def _set_levels(self, sigma_max: float) -> None:
        check_noise_range(self.sigma_min, sigma_max, self.num_scales)
        sigmas = (geometric_sigmas(sigma_max, self.sigma_min, self.num_scales) if self.num_scales is not None
                  else ncsn_sigmas(sigma_max=sigma_max, sigma_min=self.sigma_min, dim=self.data_dim,
                                   overlap=self.overlap))
        self.sigma_max, self.num_scales, self.sigmas = float(sigma_max), len(sigmas), sigmas
        self.hparams["sigma_max"], self.hparams["num_scales"] = self.sigma_max, self.num_scales
        self.eval_metrics = QuartileMeans(("loss",), self.num_scales)

    def _require_levels(self) -> torch.Tensor:
        if self.sigmas is None:
            raise RuntimeError("the noise levels are not known yet: sigma_max is computed from the training data "
                               "when the trainer sets the module up (or pass sigma_max)")
        return self.sigmas

    @property
    def gamma(self) -> float:
        """The ratio sigma_{i-1} / sigma_i of neighbouring levels."""
        sigmas = self._require_levels()
        return float(sigmas[0] / sigmas[1])

    def setup(self, stage: str) -> None:
        self.check_data()
        if self.sigmas is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        train_set = getattr(datamodule, "train_set", None)
        if train_set is None:
            raise ValueError("sigma_max is not set and there is no datamodule training set to compute it from "
                             "(the largest distance between training images): set model.init_args.sigma_max")
        count = len(train_set)
        if count < 2:
            raise ValueError(f"need at least two training images to compute sigma_max, got {count}")
        index = (torch.randperm(count, generator=torch.Generator().manual_seed(0))[:self.max_data_points]
                 if count > self.max_data_points else torch.arange(count))
        images = torch.stack([train_set[int(i)][0] for i in index])
        sigma_max = max_pairwise_distance(images)
        # Random crops/flips could differ between ranks: every rank takes rank 0's value.
        sigma_max = float(self.trainer.strategy.broadcast(sigma_max, src=0))
        self._set_levels(sigma_max)
        rank_zero_info(f"NCSN noise levels: sigma_max = {sigma_max:.4f} (largest distance between {len(index)} "
                       f"training images), sigma_min = {self.sigma_min}, L = {self.num_scales} levels, "
                       f"gamma = {self.gamma:.4f} (D = {self.data_dim}, overlap {self.overlap})")

    # ------------------------------------------------------------------ networks
    def score_network(self, ema: bool = True) -> NoiseConditionalScoreNetwork:
        """s_theta on the EMA (or raw) UNet: ``score_sigma(x, sigma)``, ``score_model()`` for the SDE samplers."""
        self._require_levels()
        unet = self.ema.module if ema else self.model
        return NoiseConditionalScoreNetwork(unet, self.sigma_min, self.sigma_max, num_timesteps=self.num_scales,
                                            scale_input=self.scale_input)

    def network_timesteps(self, level_index: torch.Tensor) -> torch.Tensor:
        """The UNet timestep of level i: t = L - 1 - i (see the module docstring)."""
        return (self.num_scales - 1) - level_index.long()

    def _labels(self, y: torch.Tensor) -> Optional[torch.Tensor]:
        return y if self.config.num_classes is not None else None

    def _loss(self, network: NoiseConditionalScoreNetwork, x: torch.Tensor, y: torch.Tensor, generator) -> dict:
        return ncsn_loss(network.score_sigma, x, self._require_levels(), generator, y=self._labels(y))

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self._loss(self.score_network(ema=False), x, y, self.generator(x.device))
        loss = out["loss"].mean()
        t_all, loss_all = self.gather_examples(self.network_timesteps(out["sigma_index"]), out["loss"])
        self.check_finite(loss_all)
        self.log_training_losses(t_all.long(), {"loss": loss_all}, self.num_scales)
        return loss

    def on_weights_updated(self) -> None:
        self.ema.update(self.model)

    # ------------------------------------------------------------------ evaluation (EMA weights)
    def _evaluate(self, batch, batch_idx: int) -> None:
        x, y = batch
        generator = self.evaluation_generator(x.device, batch_idx)
        out = self._loss(self.score_network(ema=True), x, y, generator)
        self.eval_metrics.update(self.network_timesteps(out["sigma_index"]), {"loss": out["loss"]})

    # ------------------------------------------------------------------ sampling (EMA weights)
    def langevin_step_size(self, steps_per_level: Optional[int] = None) -> float:
        """The configured step size, or Technique 4's for ``steps_per_level`` and this model's gamma."""
        if self.step_size is not None:
            return float(self.step_size)
        return langevin_step_size(self.gamma, steps_per_level or self.steps_per_level, self.sigma_min)

    @torch.no_grad()
    def sample(self, num_samples: int, labels: Optional[torch.Tensor] = None, *,
               sampler: Optional[NCSNSampler] = None, steps: Optional[int | str] = None,
               generator: Optional[torch.Generator] = None, progress: bool = False,
               weights: Literal["ema", "raw"] = "ema", **options) -> torch.Tensor:
        """Samples (B, C, H, W) from the EMA (or raw) score network.

        Args:
            num_samples: batch size.
            labels: class labels (B,) of a class-conditional network.
            sampler: ``"annealed-langevin"`` (default: the module's ``sampler``), or a VE SDE sampler
                ``"pc"``, ``"reverse-diffusion"``, ``"euler-maruyama"``, ``"ode"``.
            steps: annealed Langevin: steps per level T (default ``steps_per_level``); SDE samplers:
                predictor steps (default L - 1, one per level); ignored by ``ode`` (adaptive).
                An integer or its string (``SampleGridCallback`` passes strings).
            generator: for reproducible noise.
            progress: show a progress bar.
            weights: ``"ema"`` (the averaged network) or ``"raw"`` (the training weights).
            options: passed to the sampler (e.g. ``step_size``, ``denoise``, ``snr``).
        """
        from ..sde import annealed_langevin_sample, ode_sample, pc_sample

        sampler = sampler or self.sampler
        self._check_sampling(sampler, self.steps_per_level, self.step_size)
        if self.config.num_classes is not None and labels is None:
            raise ValueError(f"this model is class-conditional ({self.config.num_classes} classes): pass labels")
        if steps is not None:
            try:
                steps = int(steps)
            except ValueError:
                raise ValueError(f"NCSN sampling steps must be an integer, got {steps!r}") from None
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
        network = self.score_network(ema=weights == "ema")
        was_training = network.training
        network.eval()
        shape = (num_samples, self.config.in_channels, self.config.image_size, self.config.image_size)
        common = dict(y=labels if self.config.num_classes is not None else None, generator=generator,
                      progress=progress, device=self.device)
        try:
            if sampler == "annealed-langevin":
                per_level = steps or self.steps_per_level
                options.setdefault("step_size", self.langevin_step_size(per_level))
                return annealed_langevin_sample(network.score_model(), None, shape, sigmas=self.sigmas,
                                                steps_per_level=per_level, **common, **options)
            if sampler == "ode":
                return ode_sample(network.score_model(), None, shape, **common, **options)
            kinds = {"pc": ("reverse_diffusion", "langevin"), "reverse-diffusion": ("reverse_diffusion", "none"),
                     "euler-maruyama": ("euler_maruyama", "none")}
            predictor, corrector = kinds[sampler]
            options = {"predictor": predictor, "corrector": corrector, **options}
            return pc_sample(network.score_model(), None, shape, steps=steps, **common, **options)
        finally:
            network.train(was_training)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """One EMA sample per image of the batch: ``{"images": uint8 NHWC, "labels": int64}``."""
        _, y = batch
        generator = self.evaluation_generator(y.device, batch_idx)
        images = self.sample(len(y), y, generator=generator)
        return {"images": to_uint8_nhwc(images), "labels": y}


__all__ = ["NCSNModule", "NCSNSampler", "resolve_ncsn_network", "check_noise_range"]
