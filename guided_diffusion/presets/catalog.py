"""Named network presets: every released OpenAI guided-diffusion checkpoint, the paper's training
runs, and small CPU configurations.

A :class:`Preset` bundles the network architecture (kind + config), the diffusion it was trained
with (a :class:`~guided_diffusion.diffusion.DiffusionConfig`, paired with an imported
checkpoint) and the sampling settings of the reference README (respacing, paired classifier,
guidance scale). ``get_preset(name).build()`` constructs the network.

Released checkpoints (``https://openaipublic.blob.core.windows.net/diffusion/jul-2021/<file>``)
and the reference flags that build them are listed in ``tests/fixtures/openai_keys``; the tests
check every preset against those key/shape lists. The reference's command-line flags are read by
:mod:`.openai_flags`.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from ..diffusion import DiffusionConfig
from ..nets.encoder import EncoderUNetConfig
from ..nets.unet import UNetConfig
from .registry import build_network

__all__ = [
    "SamplingSettings",
    "Preset",
    "PRESETS",
    "get_preset",
    "list_presets",
    "IMAGENET_CLASSES",
]

IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class SamplingSettings:
    """How the reference README samples from a model (defaults for ``gd sample``)."""

    timestep_respacing: str = "250"
    """Sampling steps: e.g. ``"250"``, ``"ddim25"``; ``""`` = all training steps."""
    classifier: str | None = None
    """Preset name of the noise-aware classifier used for guidance (ADM-G)."""
    classifier_scale: float = 0.0
    """Classifier guidance scale s (0 = unguided)."""


@dataclass(frozen=True)
class Preset:
    """A named network configuration with its diffusion and sampling settings."""

    name: str
    kind: str
    """Registry kind: ``"unet"``, ``"superres_unet"`` or ``"encoder_unet"``."""
    config: UNetConfig | EncoderUNetConfig
    diffusion: DiffusionConfig
    """The diffusion the network was trained with (what an imported checkpoint is paired with)."""
    description: str
    checkpoint: str | None = None
    """File name of the released OpenAI checkpoint this preset loads (``None`` = not released)."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    training: Mapping[str, Any] | None = None
    """Optimisation hyper-parameters of the paper's run (batch size, lr, iterations, EMA rate)."""

    def build(self, **overrides) -> nn.Module:
        """Construct the network (randomly initialised); ``overrides`` replace config fields."""
        return build_network(self.kind, dataclasses.replace(self.config, **overrides))

    @property
    def num_parameters(self) -> int:
        """Parameter count (built on the meta device, no memory used)."""
        import torch

        with torch.device("meta"):
            return sum(p.numel() for p in self.build().parameters())


# ----------------------------------------------------------------------------------------------
# Released ImageNet / LSUN models (reference README flags)

_ADM_BASE = dict(attention_resolutions=(32, 16, 8), learn_sigma=True, resblock_updown=True,
                 use_scale_shift_norm=True)
_LINEAR = DiffusionConfig(noise_schedule="linear", learn_sigma=True)
_COSINE = DiffusionConfig(noise_schedule="cosine", learn_sigma=True)


def _adm(image_size, channels, *, num_classes=IMAGENET_CLASSES, **kwargs) -> UNetConfig:
    return UNetConfig(image_size=image_size, model_channels=channels, num_classes=num_classes,
                      **{**_ADM_BASE, **kwargs})


def _classifier(image_size, **kwargs) -> EncoderUNetConfig:
    return EncoderUNetConfig(image_size=image_size, **kwargs)


_CONFIGS: dict[str, UNetConfig | EncoderUNetConfig] = {
    "64_cond": _adm(64, 192, num_res_blocks=3, dropout=0.1, num_head_channels=64, use_new_attention_order=True),
    "128_cond": _adm(128, 256, num_res_blocks=2, num_heads=4),
    "256_cond": _adm(256, 256, num_res_blocks=2, num_head_channels=64),
    "256_uncond": _adm(256, 256, num_res_blocks=2, num_head_channels=64, num_classes=None),
    "512_cond": _adm(512, 256, num_res_blocks=2, num_head_channels=64),
    "lsun_256": _adm(256, 256, num_res_blocks=2, num_head_channels=64, dropout=0.1, num_classes=None),
    "64_256_upsampler": _adm(256, 192, low_res_size=64, num_res_blocks=2, num_heads=4,
                             channel_mult=(1, 1, 2, 2, 4, 4)),
    "128_512_upsampler": _adm(512, 192, low_res_size=128, num_res_blocks=2, num_head_channels=64,
                              attention_resolutions=(32, 16), channel_mult=(1, 1, 2, 2, 4, 4)),
    "64_classifier": _classifier(64, num_res_blocks=4),
    "128_classifier": _classifier(128),
    "256_classifier": _classifier(256),
    "512_classifier": _classifier(512),
}


def _released(name, kind, diffusion, description, checkpoint, sampling=None) -> Preset:
    return Preset(name, kind, _CONFIGS[name], diffusion, description, checkpoint,
                  sampling or SamplingSettings())


def _guided(classifier, scale):
    return SamplingSettings("250", classifier, scale)


_RELEASED = [
    _released("64_cond", "unet", _COSINE, "ADM ImageNet 64x64, class-conditional (FID 2.07 with guidance)",
              "64x64_diffusion.pt", _guided("64_classifier", 1.0)),
    _released("128_cond", "unet", _LINEAR, "ADM ImageNet 128x128, class-conditional (ADM-G FID 2.97)",
              "128x128_diffusion.pt", _guided("128_classifier", 0.5)),
    _released("256_cond", "unet", _LINEAR, "ADM ImageNet 256x256, class-conditional (ADM-G FID 4.59)",
              "256x256_diffusion.pt", _guided("256_classifier", 1.0)),
    _released("256_uncond", "unet", _LINEAR, "ADM ImageNet 256x256, unconditional (guided with scale 10)",
              "256x256_diffusion_uncond.pt", _guided("256_classifier", 10.0)),
    _released("512_cond", "unet", _LINEAR, "ADM ImageNet 512x512, class-conditional (ADM-G FID 7.72)",
              "512x512_diffusion.pt", _guided("512_classifier", 4.0)),
    _released("64_classifier", "encoder_unet", DiffusionConfig(noise_schedule="cosine"),
              "Noise-aware ImageNet 64x64 classifier (depth 4), for 64_cond", "64x64_classifier.pt"),
    _released("128_classifier", "encoder_unet", DiffusionConfig(), "Noise-aware ImageNet 128x128 classifier",
              "128x128_classifier.pt"),
    _released("256_classifier", "encoder_unet", DiffusionConfig(), "Noise-aware ImageNet 256x256 classifier",
              "256x256_classifier.pt"),
    _released("512_classifier", "encoder_unet", DiffusionConfig(), "Noise-aware ImageNet 512x512 classifier",
              "512x512_classifier.pt"),
    _released("64_256_upsampler", "superres_unet", _LINEAR, "ADM-U upsampler 64 -> 256, class-conditional",
              "64_256_upsampler.pt"),
    _released("128_512_upsampler", "superres_unet", _LINEAR, "ADM-U upsampler 128 -> 512, class-conditional",
              "128_512_upsampler.pt"),
    _released("lsun_256", "unet", _LINEAR, "ADM LSUN 256x256 (bedroom, cat or horse), unconditional",
              "lsun_bedroom.pt", SamplingSettings("1000")),
]

_LSUN = [
    dataclasses.replace(_RELEASED[-1], name=f"lsun_{category}", checkpoint=f"lsun_{category}.pt",
                        description=f"ADM LSUN {category} 256x256, unconditional")
    for category in ("bedroom", "cat", "horse")
] + [
    dataclasses.replace(_RELEASED[-1], name="lsun_horse_nodropout", checkpoint="lsun_horse_nodropout.pt",
                        config=dataclasses.replace(_CONFIGS["lsun_256"], dropout=0.0),
                        description="ADM LSUN horse 256x256 trained without dropout"),
]

# ----------------------------------------------------------------------------------------------
# Released improved-diffusion models (Nichol & Dhariwal 2021; openai/improved-diffusion 1bc7bbb, whose
# defaults differ: legacy 4-head attention at 16 and 8, no resblock_updown, rescaled timesteps and
# learned sigmas unless the flags say otherwise). Key lists: tests/fixtures/improved_diffusion_keys.


def _improved_unet(image_size, channels, num_res_blocks, **kwargs) -> UNetConfig:
    return UNetConfig(**{**dict(image_size=image_size, model_channels=channels, num_res_blocks=num_res_blocks,
                                num_heads=4, attention_resolutions=(16, 8), learn_sigma=True,
                                use_scale_shift_norm=True, resblock_updown=False), **kwargs})


def _improved(name, config, diffusion, description, checkpoint, kind="unet") -> Preset:
    return Preset(name, kind, config, diffusion, description, checkpoint, SamplingSettings("250"))


_IMPROVED_RESCALED = dict(learn_sigma=True, rescale_learned_sigmas=True, rescale_timesteps=True)
_IMPROVED_CIFAR = _improved_unet(32, 128, 3, dropout=0.3)
_IMPROVED_IN64 = _improved_unet(64, 128, 3)
_IMPROVED_LSUN = _improved_unet(256, 128, 2, num_heads=1, use_scale_shift_norm=False, attention_resolutions=(16,))
_IMPROVED_LSUN_DIFFUSION = DiffusionConfig(steps=1000, noise_schedule="linear", learn_sigma=True)


def _improved_hybrid_and_vlb(name, config, description, checkpoint_hybrid, checkpoint_vlb) -> list[Preset]:
    """The L_hybrid model and the L_vlb model (``use_kl``) of one architecture: 4000 cosine steps, rescaled."""
    return [_improved(name + suffix, config,
                      DiffusionConfig(steps=4000, noise_schedule="cosine", use_kl=use_kl, **_IMPROVED_RESCALED),
                      f"{description}, {loss}", checkpoint)
            for suffix, use_kl, loss, checkpoint in (("", False, "L_hybrid", checkpoint_hybrid),
                                                     ("_vlb", True, "L_vlb", checkpoint_vlb))]


_IMPROVED = [
    *_improved_hybrid_and_vlb("improved_cifar10_uncond", _IMPROVED_CIFAR, "improved DDPM CIFAR-10 32x32, unconditional",
                              "cifar10_uncond_50M_500K.pt", "cifar10_uncond_vlb_50M_500K.pt"),
    _improved("improved_imagenet64_cond", _improved_unet(64, 192, 3, num_classes=IMAGENET_CLASSES),
              DiffusionConfig(steps=4000, noise_schedule="cosine", learn_sigma=True),
              "improved DDPM ImageNet 64x64, class-conditional (270M)", "imagenet64_cond_270M_250K.pt"),
    *_improved_hybrid_and_vlb("improved_imagenet64_uncond", _IMPROVED_IN64,
                              "improved DDPM ImageNet 64x64, unconditional (100M)", "imagenet64_uncond_100M_1500K.pt",
                              "imagenet64_uncond_vlb_100M_1500K.pt"),
    _improved("improved_lsun_bedroom_bs128", _IMPROVED_LSUN, _IMPROVED_LSUN_DIFFUSION,
              "improved DDPM LSUN bedroom 256x256, batch 128, 1.2M steps", "lsun_uncond_100M_1200K_bs128.pt"),
    _improved("improved_lsun_bedroom_bs64", _IMPROVED_LSUN, _IMPROVED_LSUN_DIFFUSION,
              "improved DDPM LSUN bedroom 256x256, batch 64, 2.4M steps", "lsun_uncond_100M_2400K_bs64.pt"),
    _improved("improved_upsample_64_256",
              _improved_unet(256, 192, 2, low_res_size=64, channel_mult=(1, 1, 2, 2, 4, 4),
                             num_classes=IMAGENET_CLASSES),
              DiffusionConfig(steps=4000, noise_schedule="linear", learn_sigma=True),
              "improved DDPM ImageNet upsampler 64 -> 256, class-conditional", "upsample_cond_500K.pt",
              kind="superres_unet"),
]

# ----------------------------------------------------------------------------------------------
# The paper's training runs (Dhariwal & Nichol 2021, appendix hyper-parameter tables): same
# architectures as the released models, plus the optimisation settings.


def _run(name, base, batch_size, lr, iterations, description) -> Preset:
    preset = next(p for p in _RELEASED if p.name == base)
    training = dict(batch_size=batch_size, lr=lr, iterations=iterations, ema_rate=0.9999)
    return dataclasses.replace(preset, name=name, checkpoint=None, training=training, description=description)


_PAPER_RUNS = [
    _run("adm_imagenet64", "64_cond", 2048, 3e-4, 540_000, "Paper run: ADM ImageNet 64x64 (296M)"),
    _run("adm_imagenet128", "128_cond", 256, 1e-4, 4_360_000, "Paper run: ADM ImageNet 128x128 (422M)"),
    _run("adm_imagenet256", "256_cond", 256, 1e-4, 1_980_000, "Paper run: ADM ImageNet 256x256 (554M)"),
    _run("adm_imagenet512", "512_cond", 256, 1e-4, 1_940_000, "Paper run: ADM ImageNet 512x512 (559M)"),
    _run("adm_lsun256", "lsun_256", 256, 1e-4, None, "Paper run: ADM LSUN 256x256 (552M)"),
    _run("adm_upsampler_64_256", "64_256_upsampler", 256, 1e-4, 500_000,
         "Paper run: ADM-U ImageNet 64 -> 256 upsampler (312M)"),
    _run("adm_upsampler_128_512", "128_512_upsampler", 256, 1e-4, 1_050_000,
         "Paper run: ADM-U ImageNet 128 -> 512 upsampler (309M)"),
    dataclasses.replace(
        next(p for p in _RELEASED if p.name == "128_classifier"), name="adm_classifier128", checkpoint=None,
        training=dict(batch_size=256, lr=3e-4, iterations=300_000, weight_decay=0.05, anneal_lr=True),
        description="Reference README run: ImageNet 128x128 noise-aware classifier"),
]

# ----------------------------------------------------------------------------------------------
# Small CPU presets

_SMALL = [
    Preset("cifar32_adm", "unet",
           UNetConfig(image_size=32, model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                      attention_resolutions=(16, 8), num_head_channels=32, learn_sigma=True,
                      use_scale_shift_norm=True, resblock_updown=True, num_classes=10),
           _COSINE, "ADM-style 32x32 model, 10 classes, ~11M parameters (CPU benchmarks, CIFAR-10 scale)",
           sampling=SamplingSettings("100", "cifar32_classifier", 1.0)),
    Preset("cifar32_classifier", "encoder_unet",
           EncoderUNetConfig(image_size=32, model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                             attention_resolutions=(16, 8), num_head_channels=32, num_classes=10),
           DiffusionConfig(noise_schedule="cosine"), "Noise-aware classifier for cifar32_adm (~4M parameters)"),
    Preset("mnist32_adm", "unet",
           UNetConfig(image_size=32, in_channels=1, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_resolutions=(8,), num_head_channels=32, learn_sigma=False,
                      use_scale_shift_norm=True, resblock_updown=True, num_classes=10),
           DiffusionConfig(noise_schedule="cosine", learn_sigma=False, predict_xstart=True),
           "Small 32x32 grey-scale model of the MNIST demo, configs/mnist/diffusion.yaml (~1.4M parameters, "
           "x0 target, fixed variance)",
           sampling=SamplingSettings("50", "mnist32_classifier", 1.0)),
    Preset("mnist32_classifier", "encoder_unet",
           EncoderUNetConfig(image_size=32, in_channels=1, model_channels=32, channel_mult=(1, 2, 2),
                             num_res_blocks=1, attention_resolutions=(8,), num_head_channels=32, num_classes=10),
           DiffusionConfig(noise_schedule="cosine"), "Noise-aware classifier for mnist32_adm (~0.6M parameters)"),
]

#: name -> preset. Treat as read-only; :func:`get_preset` returns copies.
PRESETS: dict[str, Preset] = {p.name: p for p in _RELEASED + _LSUN + _IMPROVED + _PAPER_RUNS + _SMALL}


def list_presets(kind: str | None = None, released_only: bool = False) -> list[str]:
    """Preset names, optionally only those of one network kind or with a released checkpoint."""
    return [name for name, p in PRESETS.items()
            if (kind is None or p.kind == kind) and (not released_only or p.checkpoint)]


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (a copy: changing it does not change the registry)."""
    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
