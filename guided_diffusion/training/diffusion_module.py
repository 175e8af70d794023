"""``DiffusionModule``: Lightning training of an ADM UNet with the improved-DDPM objective.

Thin glue over the core: the network comes from :mod:`guided_diffusion.nets`, the loss from
``GaussianDiffusion.training_losses`` (the hybrid loss L_simple + L_vlb for learned-sigma models),
the timesteps from a :mod:`~guided_diffusion.diffusion.timestep_sampler`, samples from
:func:`guided_diffusion.sampling.sample`. What this module adds is the training-loop glue of
guided-diffusion's ``TrainLoop``: importance-weighted losses, the loss-aware sampler fed with the
(t, loss) pairs of *all* ranks, EMA weights, per-quartile logging and label dropout.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from ..diffusion import DiffusionConfig, create_timestep_sampler
from ..diffusion.weighting import LossWeighting
from ..images import to_uint8_nhwc
from ..nets import UNetConfig
from ..presets import config_from_dict, get_preset
from ..sampling.registry import SamplerName
from .base import LrSchedule, TrainingModule
from .ema import EMA, EmaOptions
from .loss_stats import QuartileMeans


def resolve_diffusion_network(network: UNetConfig | str | dict, diffusion: DiffusionConfig | dict | None,
                              label_dropout: float = 0.0) -> tuple[UNetConfig, DiffusionConfig]:
    """The UNet config and diffusion config a ``DiffusionModule`` trains (see its arguments)."""
    default_diffusion = None
    if isinstance(network, str):
        preset = get_preset(network)
        if preset.kind not in ("unet", "superres_unet"):
            raise ValueError(f"preset {network!r} is a {preset.kind!r} network; DiffusionModule trains 'unet' and "
                             "'superres_unet' presets")
        network, default_diffusion = preset.config, preset.diffusion
    elif isinstance(network, dict):
        network = config_from_dict("unet", network)
    if not isinstance(network, UNetConfig):
        raise TypeError(f"network must be a UNetConfig, its dict form or a preset name, got {type(network).__name__}")
    if network.is_super_resolution and network.low_res_size >= network.image_size:
        raise ValueError(f"a super-resolution network upsamples: low_res_size {network.low_res_size} must be below "
                         f"image_size {network.image_size}")
    if isinstance(diffusion, dict):
        diffusion = DiffusionConfig(**diffusion)
    diffusion = diffusion or default_diffusion or DiffusionConfig(learn_sigma=network.learn_sigma)
    if diffusion.learn_sigma != network.learn_sigma:
        raise ValueError(f"diffusion.learn_sigma={diffusion.learn_sigma} but network.learn_sigma="
                         f"{network.learn_sigma}: a learned-variance diffusion needs the variance output channels")
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")
    if label_dropout > 0:
        if network.num_classes is None:
            raise ValueError("label_dropout needs a class-conditional network (num_classes is None)")
        network = dataclasses.replace(network, null_class=True)
    return network, diffusion


def loss_terms(diffusion) -> tuple[str, ...]:
    """The per-example terms ``training_losses`` returns for this diffusion."""
    if diffusion.loss_type in ("kl", "rescaled_kl"):
        return ("loss",)
    return ("loss", "mse", "vb") if diffusion.learns_variance else ("loss", "mse")


class DiffusionModule(TrainingModule):
    """Train an ADM UNet denoiser (improved DDPM / "Diffusion Models Beat GANs").

    Validation, sampling and prediction use the EMA weights. Checkpoints hold the network and
    diffusion configs (``hyper_parameters``), the weights (``model.*``), the EMA (``ema.module.*``)
    and the timestep-sampler state, so :func:`load_diffusion_checkpoint` rebuilds them with no flags.

    Args:
        network: the UNet architecture (``UNetConfig`` fields), or a preset name from
            ``guided_diffusion.presets.catalog`` (e.g. ``"adm_imagenet64"``, ``"mnist32_adm"``).
        diffusion: the diffusion process; ``None`` = the preset's, or 1000 linear steps with
            ``learn_sigma`` as the network's.
        lr: AdamW learning rate (ADM: 1e-4; 3e-4 at 64x64).
        weight_decay: AdamW weight decay (ADM: 0).
        lr_warmup_steps: linear LR warm-up steps (0 = none).
        lr_anneal_steps: decay the LR to 0 at this step (0 = constant, as ADM).
        lr_schedule: shape of that decay: ``"linear"`` (guided-diffusion's ``lr_anneal_steps``) or
            ``"cosine"`` (see :func:`~guided_diffusion.training.lr_schedule.build_lr_scheduler`).
        ema: the EMA of the weights used for validation and sampling (:class:`EmaOptions`, or a dict of
            its fields ``rate``, ``warmup``, ``schedule``, ``power_gamma``; ADM: rate 0.9999 with warm-up).
        loss_weighting: the weight w_t of the MSE term, loss = w_t * L_simple (+ L_vlb as in ADM)
            (:class:`~guided_diffusion.diffusion.weighting.LossWeighting`, or a dict of its fields:
            ``kind`` and its parameters; ADM: ``none``).
        timestep_sampler: ``"uniform"`` t, or ``"loss-second-moment"`` importance sampling
            (p_t ~ sqrt(E[L_t^2]), kept identical on all ranks).
        label_dropout: probability of replacing a label by the null class ``num_classes`` (trains
            an unconditional model alongside, for classifier-free guidance); 0 = off.
        max_consecutive_nonfinite: stop after this many consecutive non-finite losses.
        sampler: sampler of :meth:`sample` and ``predict`` (``"ddim"``, ``"ddpm"``, ``"dpm-solver"``).
        sampling_steps: respacing of :meth:`sample` and ``predict`` (e.g. ``"ddim25"``, ``"250"``).
        compile: ``torch.compile`` the network (and its EMA copy) in place when training starts.
        channels_last: NHWC memory order for the convolutions.
    """

    def __init__(self, network: UNetConfig | str = "mnist32_adm", diffusion: Optional[DiffusionConfig] = None,
                 lr: float = 1e-4, weight_decay: float = 0.0, lr_warmup_steps: int = 0, lr_anneal_steps: int = 0,
                 ema: EmaOptions = EmaOptions(),
                 timestep_sampler: Literal["uniform", "loss-second-moment"] = "loss-second-moment",
                 label_dropout: float = 0.0, max_consecutive_nonfinite: int = 10,
                 sampler: SamplerName = "ddim", sampling_steps: str = "ddim25",
                 lr_schedule: LrSchedule = "linear", loss_weighting: LossWeighting = LossWeighting(),
                 compile: bool = False, channels_last: bool = False):
        super().__init__(lr, weight_decay, lr_warmup_steps, lr_anneal_steps, max_consecutive_nonfinite, lr_schedule,
                         compile=compile, channels_last=channels_last)
        config, diffusion_config = resolve_diffusion_network(network, diffusion, label_dropout)
        ema, loss_weighting = EmaOptions.coerce(ema), LossWeighting.coerce(loss_weighting)
        # Plain values only (dataclasses as dicts): checkpoints then load with weights_only=True.
        # ``_class_path`` lets ``gd validate|test|predict --ckpt_path FILE`` rebuild the module from the file.
        self.save_hyperparameters(dict(
            _class_path=f"{type(self).__module__}.{type(self).__qualname__}",
            network=config.to_dict(), diffusion=dataclasses.asdict(diffusion_config), lr=lr,
            weight_decay=weight_decay, lr_warmup_steps=lr_warmup_steps, lr_anneal_steps=lr_anneal_steps,
            ema=dataclasses.asdict(ema), timestep_sampler=timestep_sampler, label_dropout=label_dropout,
            max_consecutive_nonfinite=max_consecutive_nonfinite, lr_schedule=lr_schedule,
            loss_weighting=dataclasses.asdict(loss_weighting)))
        # (sampler settings are left out: LightningCLI applies a checkpoint's hyper-parameters over
        # the command line, and how to sample is a choice made at sampling time)
        self.config, self.diffusion_config = config, diffusion_config
        self.model = config.build()
        self.ema = EMA.from_options(self.model, ema)
        self.diffusion = diffusion_config.build()
        self.loss_weighting = loss_weighting
        weights = loss_weighting.weights(self.diffusion.alphas_cumprod, mean_type=self.diffusion.mean_type)
        # per original timestep; not persistent: it follows from the hyper-parameters
        self.register_buffer("mse_weight_table", torch.as_tensor(weights, dtype=torch.float32), persistent=False)
        self.timestep_sampler = create_timestep_sampler(timestep_sampler, self.diffusion.num_timesteps)
        self.label_dropout = label_dropout
        self.sampler, self.sampling_steps = sampler, sampling_steps
        self.loss_terms = loss_terms(self.diffusion)
        self.eval_metrics = QuartileMeans(self.loss_terms, self.diffusion.num_timesteps)

    @property
    def ema_model(self) -> torch.nn.Module:
        """The EMA network (what sampling and validation use)."""
        return self.ema.module

    @property
    def num_classes(self) -> Optional[int]:
        return self.config.num_classes

    def setup(self, stage: str) -> None:
        self.check_data()

    # ------------------------------------------------------------------ training
    def model_labels(self, y: torch.Tensor, drop: bool) -> Optional[torch.Tensor]:
        """Labels for the network: ``None`` if unconditional; with ``drop``, label dropout applied."""
        if self.config.num_classes is None:
            return None
        if drop and self.label_dropout > 0:
            dropped = torch.rand(y.shape, generator=self.generator(y.device), device=y.device) < self.label_dropout
            y = torch.where(dropped, torch.full_like(y, self.config.num_classes), y)
        return y

    def low_res_input(self, x: torch.Tensor) -> Optional[dict]:
        """``{"low_res": x area-downsampled to low_res_size}`` for a super-resolution model (as guided-diffusion's
        ``super_res_train.py``), else None."""
        if not self.config.is_super_resolution:
            return None
        size = self.config.low_res_size
        return {"low_res": F.interpolate(x, size=(size, size), mode="area")}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        t, weights = self.timestep_sampler.sample(x.shape[0], x.device, generator=self.generator(torch.device("cpu")))
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        mse_weight = None if self.loss_weighting.is_uniform else self.mse_weight_table[t]
        terms = self.diffusion.training_losses(self.model, x, t, y=self.model_labels(y, drop=True), noise=noise,
                                               mse_weight=mse_weight, model_kwargs=self.low_res_input(x))
        loss = (terms["loss"] * weights).mean()

        t_all, *values_all = self.gather_examples(t, *(terms[name] for name in self.loss_terms))
        t_all, values_all = t_all.long(), dict(zip(self.loss_terms, values_all))
        self.timestep_sampler.update_with_all_losses(t_all, values_all["loss"])
        self.check_finite(values_all["loss"])
        self.log_training_losses(t_all, values_all, self.diffusion.num_timesteps)
        return loss

    def on_weights_updated(self) -> None:
        self.ema.update(self.model)

    # ------------------------------------------------------------------ evaluation (EMA weights)
    def _evaluate(self, batch, batch_idx: int) -> None:
        x, y = batch
        generator = self.evaluation_generator(x.device, batch_idx)
        t = torch.randint(0, self.diffusion.num_timesteps, (x.shape[0],), generator=generator, device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        terms = self.diffusion.training_losses(self.ema.module, x, t, y=self.model_labels(y, drop=False), noise=noise,
                                               model_kwargs=self.low_res_input(x))
        self.eval_metrics.update(t, terms)

    # ------------------------------------------------------------------ sampling (EMA weights)
    @torch.no_grad()
    def sample(self, num_samples: int, labels: Optional[torch.Tensor] = None, *, sampler: Optional[str] = None,
               steps: Optional[str] = None, generator: Optional[torch.Generator] = None, guidance=None,
               progress: bool = False, weights: Literal["ema", "raw"] = "ema",
               low_res: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Draw ``num_samples`` images in [-1, 1] with :func:`guided_diffusion.sampling.sample`.

        Args:
            num_samples: batch size.
            labels: class labels ``(num_samples,)`` for a class-conditional model.
            sampler: sampler name (default: the module's ``sampler``).
            steps: respacing spec (default: the module's ``sampling_steps``).
            generator: for reproducible noise.
            guidance: a guidance object (classifier or classifier-free guidance).
            progress: show a progress bar.
            weights: ``"ema"`` (the averaged network, :meth:`describe_weights`) or ``"raw"`` (the
                training weights).
            low_res: the low-resolution images ``(num_samples, C, low_res_size, low_res_size)`` in [-1, 1]
                a super-resolution model upsamples (required for one, refused otherwise).
        """
        from ..sampling import sample

        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
        config, model = self.config, self.ema.module if weights == "ema" else self.model
        if config.num_classes is not None and labels is None:
            raise ValueError(f"this model is class-conditional ({config.num_classes} classes): pass labels")
        if config.is_super_resolution != (low_res is not None):
            raise ValueError(f"a super-resolution model samples from low_res images ({config.low_res_size} px)"
                             if config.is_super_resolution else "low_res is for super-resolution models")
        was_training = model.training
        model.eval()
        try:
            shape = (num_samples, config.in_channels, config.image_size, config.image_size)
            return sample(model, self.diffusion, shape, sampler=sampler or self.sampler,
                          steps=steps or self.sampling_steps, y=labels if config.num_classes is not None else None,
                          guidance=guidance, generator=generator, progress=progress,
                          model_kwargs=None if low_res is None else {"low_res": low_res})
        finally:
            model.train(was_training)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """One EMA sample per label of the batch: ``{"images": uint8 NHWC, "labels": int64}`` (a super-resolution
        model upsamples the batch's images, area-downsampled)."""
        x, y = batch
        generator = self.evaluation_generator(y.device, batch_idx)
        low_res = self.low_res_input(x)
        images = self.sample(len(y), y, generator=generator, low_res=None if low_res is None else low_res["low_res"])
        return {"images": to_uint8_nhwc(images), "labels": y}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["timestep_sampler"] = self.timestep_sampler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "timestep_sampler" in checkpoint:
            self.timestep_sampler.load_state_dict(checkpoint["timestep_sampler"])
