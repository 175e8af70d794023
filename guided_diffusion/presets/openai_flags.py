"""The reference repositories' command-line flags (``MODEL_FLAGS``, ``CLASSIFIER_FLAGS``,
``DIFFUSION_FLAGS`` of their READMEs) read into this project's network and diffusion configs.

The two repositories share flag names but not defaults: improved-diffusion (1bc7bbb) rescales
timesteps and learned sigmas by default and has no ``resblock_updown`` / ``num_head_channels`` /
new attention order (its attention is the legacy QKV order).
"""
from __future__ import annotations

import shlex
from typing import Literal

from ..diffusion import DiffusionConfig
from ..nets.encoder import EncoderUNetConfig
from ..nets.unet import UNetConfig
from .catalog import IMAGENET_CLASSES

__all__ = ["Repository", "config_from_openai_flags", "FLAG_NAMES"]

Repository = Literal["guided-diffusion", "improved-diffusion"]


_MODEL_DEFAULTS = dict(  # guided-diffusion model_and_diffusion_defaults()
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
    attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
    use_scale_shift_norm=True, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
    large_size=None, small_size=None)
_CLASSIFIER_DEFAULTS = dict(  # guided-diffusion classifier_defaults()
    image_size=64, classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
    classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
    classifier_resblock_updown=True, classifier_pool="attention")
_DIFFUSION_DEFAULTS = dict(learn_sigma=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="",
                           use_kl=False, predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False,
                           sigma_small=False)
#: guided-diffusion's flag names by group (its README's MODEL_FLAGS, CLASSIFIER_FLAGS, DIFFUSION_FLAGS)
FLAG_NAMES = {"model": frozenset(_MODEL_DEFAULTS), "classifier": frozenset(_CLASSIFIER_DEFAULTS),
              "diffusion": frozenset(_DIFFUSION_DEFAULTS)}
_IMPROVED_MODEL_DEFAULTS = dict(  # improved-diffusion model_and_diffusion_defaults() / sr_model_...()
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
    attention_resolutions="16,8", dropout=0.0, class_cond=False, use_checkpoint=False, use_scale_shift_norm=True,
    large_size=None, small_size=None)
_IMPROVED_DIFFUSION_DEFAULTS = {**_DIFFUSION_DEFAULTS, "rescale_timesteps": True, "rescale_learned_sigmas": True}
_IMPROVED_FIXED = dict(num_head_channels=-1, channel_mult="", resblock_updown=False, use_new_attention_order=False)
_SR_CHANNEL_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


def _parse_value(text: str, default):
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no", "t", "f", "y", "n"):
            raise ValueError(f"expected a boolean, got {text!r}")
        return text.lower() in ("true", "1", "yes", "t", "y")
    if isinstance(default, float):
        return float(text)
    if isinstance(default, int) or default is None:
        return int(text)
    return text


def _numbers(text: str) -> tuple:
    return tuple(int(float(v)) if float(v).is_integer() else float(v) for v in text.split(",") if v.strip())


def config_from_openai_flags(flags: str, kind: str | None = None, num_classes: int = IMAGENET_CLASSES,
                             repo: Repository = "guided-diffusion"
                             ) -> tuple[str, UNetConfig | EncoderUNetConfig, DiffusionConfig]:
    """Translate a reference repository's command-line flags into ``(kind, config, diffusion settings)``.

    ``kind`` is inferred when omitted: ``classifier_*`` flags mean a classifier, ``large_size`` an
    upsampler. ``use_fp16``/``use_checkpoint`` are ignored (we use autocast; checkpointing is a
    runtime choice). ``num_classes`` replaces the reference's hard-coded 1000. ``repo`` says whose
    defaults the unnamed flags take.
    """
    if repo not in ("guided-diffusion", "improved-diffusion"):
        raise ValueError(f"unknown repo {repo!r}; expected 'guided-diffusion' or 'improved-diffusion'")
    tokens = shlex.split(flags)
    values: dict[str, str] = {}
    for key, value in zip(tokens[::2], tokens[1::2]):
        if not key.startswith("--"):
            raise ValueError(f"malformed flags near {key!r}: expected '--name value' pairs")
        values[key[2:]] = value
    if len(tokens) % 2:
        raise ValueError(f"flag {tokens[-1]!r} has no value")
    if kind is None:
        kind = ("encoder_unet" if any(k.startswith("classifier_") for k in values)
                else "superres_unet" if "large_size" in values else "unet")
    if repo == "improved-diffusion":
        if kind == "encoder_unet":
            raise ValueError("improved-diffusion has no classifiers (classifier_* flags are guided-diffusion's)")
        defaults = {**_IMPROVED_MODEL_DEFAULTS, **_IMPROVED_DIFFUSION_DEFAULTS}
    else:
        defaults = {**(_CLASSIFIER_DEFAULTS if kind == "encoder_unet" else _MODEL_DEFAULTS), **_DIFFUSION_DEFAULTS}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"unknown flag(s) for a {repo} {kind} model: {unknown}")
    args = {**defaults, **{k: _parse_value(v, defaults[k]) for k, v in values.items()}}
    if repo == "improved-diffusion":
        args.update(_IMPROVED_FIXED)
    diffusion = DiffusionConfig(
        steps=args["diffusion_steps"], noise_schedule=args["noise_schedule"], learn_sigma=args["learn_sigma"],
        sigma_small=args["sigma_small"], predict_xstart=args["predict_xstart"], use_kl=args["use_kl"],
        rescale_learned_sigmas=args["rescale_learned_sigmas"], rescale_timesteps=args["rescale_timesteps"],
        timestep_respacing=args["timestep_respacing"])

    if kind == "encoder_unet":
        config = EncoderUNetConfig(
            image_size=args["image_size"], model_channels=args["classifier_width"],
            num_res_blocks=args["classifier_depth"],
            attention_resolutions=_numbers(args["classifier_attention_resolutions"]),
            use_scale_shift_norm=args["classifier_use_scale_shift_norm"],
            resblock_updown=args["classifier_resblock_updown"], pool=args["classifier_pool"],
            num_head_channels=64, num_classes=num_classes)
        return kind, config, diffusion

    common = dict(
        model_channels=args["num_channels"], num_res_blocks=args["num_res_blocks"], num_heads=args["num_heads"],
        num_heads_upsample=args["num_heads_upsample"], num_head_channels=args["num_head_channels"],
        attention_resolutions=_numbers(args["attention_resolutions"]), dropout=args["dropout"],
        use_scale_shift_norm=args["use_scale_shift_norm"], resblock_updown=args["resblock_updown"],
        learn_sigma=args["learn_sigma"], num_classes=num_classes if args["class_cond"] else None)
    if kind == "superres_unet":
        large = args["large_size"] or 256
        if large not in _SR_CHANNEL_MULT:
            raise ValueError(f"unsupported large_size {large} (reference supports {sorted(_SR_CHANNEL_MULT)})")
        config = UNetConfig(image_size=large, low_res_size=args["small_size"] or 64,
                            channel_mult=_SR_CHANNEL_MULT[large], **common)
    elif kind == "unet":
        mult = _numbers(args["channel_mult"]) if args["channel_mult"] else None
        config = UNetConfig(image_size=args["image_size"], channel_mult=mult,
                            use_new_attention_order=args["use_new_attention_order"], **common)
    else:
        raise ValueError(f"unknown network kind {kind!r}")
    return kind, config, diffusion
