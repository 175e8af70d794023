"""``NoisyClassifierModule``: Lightning training of a noise-aware classifier p_phi(y | x_t).

guided-diffusion's ``classifier_train.py`` recipe: each batch is noised to x_t = q_sample(x_0, t)
at uniform random t, the classifier sees (x_t, t) with t the original integer timestep, the loss
is cross-entropy; AdamW (lr 3e-4, weight decay 0.05) with a linear anneal; random crops come from
the data (``ImageDataModule(random_crop=True)``). Loss and top-1/top-5 accuracy are logged overall
and per timestep quartile (q0: least noise ... q3: most) on training and validation data, so the
fall of accuracy with noise is visible.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.nets.encoder import EncoderUNetConfig
from guided_diffusion.nets.timm_classifier import TimmClassifierConfig
from guided_diffusion.presets import classifier_config_from_dict, get_preset
from guided_diffusion.training.base import TrainingModule
from guided_diffusion.training.loss_stats import QuartileMeans, topk_hits

CLASSIFIER_STATS = ("loss", "acc@1", "acc@5")


def resolve_classifier_network(network: EncoderUNetConfig | TimmClassifierConfig | str | dict,
                               diffusion: DiffusionConfig | dict | None
                               ) -> tuple[EncoderUNetConfig | TimmClassifierConfig, DiffusionConfig]:
    """The classifier config and the diffusion whose x_t it is trained on."""
    default_diffusion = None
    if isinstance(network, str):
        preset = get_preset(network)
        if preset.kind != "encoder_unet":
            raise ValueError(f"preset {network!r} is a {preset.kind!r} network, not a classifier ('encoder_unet')")
        network = preset.config
        # the classifier sees x_t of the preset's process; it has no variance output of its own
        default_diffusion = dataclasses.replace(preset.diffusion, learn_sigma=False, timestep_respacing="")
    elif isinstance(network, dict):
        network = classifier_config_from_dict(network)
    if not isinstance(network, (EncoderUNetConfig, TimmClassifierConfig)):
        raise TypeError(f"network must be an EncoderUNetConfig, a TimmClassifierConfig, a dict or a preset name, "
                        f"got {type(network).__name__}")
    if isinstance(diffusion, dict):
        diffusion = DiffusionConfig(**diffusion)
    return network, diffusion or default_diffusion or DiffusionConfig()


class NoisyClassifierModule(TrainingModule):
    """Train a noise-aware classifier ``classifier(x_t, t) -> logits`` for classifier guidance.

    Checkpoints hold the classifier config and the diffusion it was trained on
    (``hyper_parameters``), so ``load_classifier_checkpoint`` rebuilds it with no flags.

    Args:
        network: the ADM encoder-UNet (``EncoderUNetConfig`` fields), any timm model
            (``TimmClassifierConfig`` fields: ``model_name``, ``pretrained_path``, ...), or a
            classifier preset name (e.g. ``"128_classifier"``, ``"mnist32_classifier"``).
        diffusion: the diffusion whose noisy images x_t the classifier learns; it must match the
            diffusion model it will guide (``None`` = the preset's, or 1000 linear steps).
        noised: train on x_t at uniform random t (``False``: clean images at t = 0).
        lr: AdamW learning rate (ADM classifiers: 3e-4).
        weight_decay: AdamW weight decay (ADM classifiers: 0.05).
        lr_warmup_steps: linear LR warm-up steps (0 = none).
        lr_anneal_steps: decay the LR linearly to 0 over this many steps (ADM: the run's
            iterations; 0 = constant).
        max_consecutive_nonfinite: stop after this many consecutive non-finite losses.
        compile: ``torch.compile`` the classifier in place when training starts.
        channels_last: NHWC memory order for the convolutions.
    """

    def __init__(self, network: EncoderUNetConfig | TimmClassifierConfig | str = "mnist32_classifier",
                 diffusion: Optional[DiffusionConfig] = None, noised: bool = True, lr: float = 3e-4,
                 weight_decay: float = 0.05, lr_warmup_steps: int = 0, lr_anneal_steps: int = 0,
                 max_consecutive_nonfinite: int = 10, compile: bool = False, channels_last: bool = False):
        super().__init__(lr, weight_decay, lr_warmup_steps, lr_anneal_steps, max_consecutive_nonfinite,
                         compile=compile, channels_last=channels_last)
        config, diffusion_config = resolve_classifier_network(network, diffusion)
        # Plain values only (dataclasses as dicts): checkpoints then load with weights_only=True.
        self.save_hyperparameters(dict(
            _class_path=f"{type(self).__module__}.{type(self).__qualname__}",  # for gd validate --ckpt_path FILE
            network=config.to_dict(), diffusion=dataclasses.asdict(diffusion_config), noised=noised, lr=lr,
            weight_decay=weight_decay, lr_warmup_steps=lr_warmup_steps, lr_anneal_steps=lr_anneal_steps,
            max_consecutive_nonfinite=max_consecutive_nonfinite))
        self.config, self.diffusion_config, self.noised = config, diffusion_config, noised
        self.model: nn.Module = config.build()
        self.diffusion = diffusion_config.build()
        self.eval_metrics = QuartileMeans(CLASSIFIER_STATS, self.diffusion.num_timesteps)

    def setup(self, stage: str) -> None:
        self.check_data()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits for noisy images at original integer timesteps."""
        return self.model(x_t, t)

    def _noisy_batch(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, t): x_0 noised at uniform random t (t = 0 and no noise when not ``noised``)."""
        if not self.noised:
            return x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        t = torch.randint(0, self.diffusion.num_timesteps, (x.shape[0],), generator=generator, device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.diffusion.q_sample(x, t, noise=noise), t

    def _step(self, batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        x_t, t = self._noisy_batch(x, generator)
        logits = self.model(x_t, self.diffusion.model_timesteps(t))
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        return losses, t, {"loss": losses.detach(), **topk_hits(logits, y, ks=(1, 5))}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        losses, t, stats = self._step(batch, self.generator(batch[0].device))
        t_all, *values_all = self.gather_examples(t, *(stats[name] for name in CLASSIFIER_STATS))
        values_all = dict(zip(CLASSIFIER_STATS, values_all))
        self.check_finite(values_all["loss"])
        self.log_training_losses(t_all.long(), values_all, self.diffusion.num_timesteps, progress_bar=("loss", "acc@1"))
        return losses.mean()

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch, batch_idx: int) -> None:
        generator = self.evaluation_generator(batch[0].device, batch_idx)
        _, t, stats = self._step(batch, generator)
        self.eval_metrics.update(t, stats)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Class probabilities of the clean images (t = 0): ``{"probs", "labels"}``."""
        x, y = batch
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return {"probs": self.model(x, t).float().softmax(dim=-1), "labels": y}
