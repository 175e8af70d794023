"""Rebuild trained networks from Lightning checkpoints with no flags, and export them.

A ``DiffusionModule`` / ``NoisyClassifierModule`` / ``NCSNModule`` checkpoint stores the network
config and the diffusion config (an NCSN: its noise levels) as plain values in ``hyper_parameters``,
and the weights under ``model.*`` (plus ``ema.module.*`` for the diffusion model and the NCSN), so
the files load with ``torch.load(weights_only=True)``.
Nothing here imports Lightning (the files are read as plain dicts).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from ..diffusion import DiffusionConfig, GaussianDiffusion
from ..presets import classifier_config_from_dict, config_from_dict
from ..atomic import check_output_file
from ..torch_files import load_torch_file
from .matching import load_strict
from .openai import export_openai_checkpoint

PathLike = str | os.PathLike


def read_training_checkpoint(path: PathLike, map_location="cpu") -> dict[str, Any]:
    """A Lightning checkpoint of this project, read with ``weights_only=True``."""
    checkpoint = load_torch_file(path, "checkpoint", map_location)
    if not is_training_checkpoint(checkpoint):
        raise ValueError(f"{str(path)!r} is not a training checkpoint of this project (a DiffusionModule, "
                         "NoisyClassifierModule or NCSNModule .ckpt: no hyper_parameters['network'])")
    return checkpoint


def _submodule_state(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def is_training_checkpoint(content: Any) -> bool:
    """A Lightning checkpoint of this project: ``state_dict`` and ``hyper_parameters['network']``."""
    hparams = content.get("hyper_parameters") if isinstance(content, Mapping) else None
    return isinstance(hparams, Mapping) and "network" in hparams and "state_dict" in content


def _ema_rate(hparams: Mapping[str, Any]):
    """The EMA rate a checkpoint was trained with (the ``ema`` group, or the flat ``ema_rate`` key)."""
    group = hparams.get("ema")
    return group.get("rate") if isinstance(group, Mapping) else hparams.get("ema_rate")


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    load_strict(model, state, "the network its config describes", source)


def _info(checkpoint: Mapping[str, Any], kind: str, **extra) -> dict[str, Any]:
    hparams = dict(checkpoint["hyper_parameters"])
    return {"kind": kind, "network": dict(hparams["network"]), "diffusion": dict(hparams["diffusion"]),
            "global_step": int(checkpoint.get("global_step", 0)), "epoch": int(checkpoint.get("epoch", 0)),
            "hyper_parameters": hparams, **extra}


def load_diffusion_checkpoint(path: PathLike, *, ema: bool = True, map_location="cpu"
                              ) -> tuple[nn.Module, GaussianDiffusion, dict[str, Any]]:
    """The UNet (EMA weights by default), its diffusion and an info dict, from a ``DiffusionModule`` checkpoint.

    Args:
        path: the Lightning ``.ckpt`` file.
        ema: load the EMA weights (``False``: the raw training weights).
        map_location: passed to ``torch.load``.

    Returns:
        ``(model, diffusion, info)``; ``model`` is in eval mode. ``info`` has ``global_step``,
        ``network`` and ``diffusion`` (config dicts), ``ema``, ``ema_rate`` and ``null_label`` (the
        label index meaning "no label" for classifier-free guidance, or ``None``).
    """
    return diffusion_from_checkpoint(read_training_checkpoint(path, map_location), ema, str(path))


def load_classifier_checkpoint(path: PathLike, *, map_location="cpu"
                               ) -> tuple[nn.Module, GaussianDiffusion, dict[str, Any]]:
    """The classifier, the diffusion it was trained on and an info dict, from a ``NoisyClassifierModule`` checkpoint.

    The classifier is ``classifier(x_t, t) -> logits`` (original integer t), in eval mode. A timm
    trunk's ``pretrained_path`` is not needed (the weights are in the checkpoint). ``info["clean"]`` is
    ``True`` for a classifier trained with ``noised: false`` (clean images at t = 0: guide through the
    predicted x_0, :func:`guided_diffusion.guidance.clean.off_the_shelf_guidance`).
    """
    return classifier_from_checkpoint(read_training_checkpoint(path, map_location), str(path))


def load_ncsn_checkpoint(path: PathLike, *, ema: bool = True, map_location="cpu"):
    """The score network (EMA weights by default), its VE SDE and an info dict, from an ``NCSNModule`` checkpoint.

    Returns:
        ``(network, sde, info)``: ``network`` is a
        :class:`~guided_diffusion.sde.ncsn.NoiseConditionalScoreNetwork` in eval mode
        (``network.score_sigma(x, sigma)``; ``network.score_model()`` for every SDE sampler;
        ``network(x, t)`` = eps with t = L - 1 - i at level i), ``sde`` its
        ``VESDE(sigma_min, sigma_max, N=L)``; ``info`` has ``sigmas`` (the L levels, decreasing,
        float64), ``global_step``, ``network`` (config dict), ``ema`` and ``hyper_parameters``.
        Annealed Langevin: ``annealed_langevin_sample(network.score_model(), None, shape,
        sigmas=info["sigmas"], steps_per_level=T, step_size=langevin_step_size(gamma, T, sigma_min))``.
    """
    return _ncsn_from_checkpoint(read_training_checkpoint(path, map_location), ema, str(path))


def _is_ncsn_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    hparams = checkpoint["hyper_parameters"]
    return "sigma_min" in hparams and "diffusion" not in hparams


def _ncsn_from_checkpoint(checkpoint: Mapping[str, Any], ema: bool, source: str):
    from ..sde.ncsn import NoiseConditionalScoreNetwork, geometric_sigmas

    if not _is_ncsn_checkpoint(checkpoint):
        raise ValueError(f"{source!r} is not an NCSNModule checkpoint (a diffusion model or a classifier)")
    hparams = checkpoint["hyper_parameters"]
    if hparams.get("sigma_max") is None or hparams.get("num_scales") is None:
        raise ValueError(f"{source!r} holds no resolved noise levels (sigma_max / num_scales): it was saved "
                         "before the module was set up")
    prefix = "ema.module." if ema else "model."
    state = _submodule_state(checkpoint["state_dict"], prefix)
    if not state:
        raise ValueError(f"{source!r} holds no '{prefix}*' weights")
    config = config_from_dict("unet", dict(hparams["network"]))
    unet = config.build()
    _load_weights(unet, state, f"the {'EMA' if ema else 'model'} weights of {source!r}")
    sigma_min, sigma_max = float(hparams["sigma_min"]), float(hparams["sigma_max"])
    num_scales = int(hparams["num_scales"])
    network = NoiseConditionalScoreNetwork(unet, sigma_min, sigma_max, num_timesteps=num_scales,
                                           scale_input=bool(hparams.get("scale_input", True)))
    hparams = dict(hparams)
    info = {"kind": "ncsn", "network": dict(hparams["network"]),
            "sigmas": geometric_sigmas(sigma_max, sigma_min, num_scales),
            "global_step": int(checkpoint.get("global_step", 0)), "epoch": int(checkpoint.get("epoch", 0)),
            "ema": ema, "ema_rate": _ema_rate(hparams), "hyper_parameters": hparams}
    return network.eval(), network.sde, info


def _is_diffusion_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    return (any(key.startswith("ema.module.") for key in checkpoint["state_dict"])
            and not _is_ncsn_checkpoint(checkpoint))


def diffusion_from_checkpoint(checkpoint: Mapping[str, Any], ema: bool, source: str):

    hparams = checkpoint["hyper_parameters"]
    if _is_ncsn_checkpoint(checkpoint):
        raise ValueError(f"{source!r} is an NCSNModule checkpoint (a VE score network), not a diffusion model "
                         "(read it with load_ncsn_checkpoint)")
    prefix = "ema.module." if ema else "model."
    state = _submodule_state(checkpoint["state_dict"], prefix)
    if not _is_diffusion_checkpoint(checkpoint):
        module = str(hparams.get("_class_path") or "NoisyClassifierModule").rsplit(".", 1)[-1]
        hint = " (a classifier: give it as --classifier)" if "Classifier" in module else ""
        raise ValueError(f"{source!r} is a {module} checkpoint, not a diffusion model{hint}")
    if not state:
        raise ValueError(f"{source!r} holds no '{prefix}*' weights: is it a DiffusionModule checkpoint?")
    config = config_from_dict("unet", dict(hparams["network"]))
    model = config.build()
    _load_weights(model, state, f"the {'EMA' if ema else 'model'} weights of {source!r}")
    diffusion = DiffusionConfig(**hparams["diffusion"]).build()
    info = _info(checkpoint, "diffusion", ema=ema, ema_rate=_ema_rate(hparams),
                 null_label=config.num_classes if config.null_class else None)
    return model.eval(), diffusion, info


def classifier_from_checkpoint(checkpoint: Mapping[str, Any], source: str):

    hparams = checkpoint["hyper_parameters"]
    network = dict(hparams["network"])
    if "model_name" in network:
        network["pretrained_path"] = None
    state = _submodule_state(checkpoint["state_dict"], "model.")
    if _is_diffusion_checkpoint(checkpoint) or _is_ncsn_checkpoint(checkpoint) or not state:
        raise ValueError(f"{source!r} is not a NoisyClassifierModule checkpoint (it holds a diffusion model or a "
                         "score network, not a classifier)")
    model = classifier_config_from_dict(network).build()
    _load_weights(model, state, f"the classifier weights of {source!r}")
    diffusion = DiffusionConfig(**hparams["diffusion"]).build()
    # noised: false (NoisyClassifierModule) = trained on clean images at t = 0; checkpoints from before the option
    # were all noise-aware.
    clean = not bool(hparams.get("noised", True))
    return model.eval(), diffusion, _info(checkpoint, "classifier", clean=clean)


def export(checkpoint: str, output: str, ema: bool = True,
           dtype: Literal["float32", "float16", "bfloat16"] = "float32") -> Path:
    """Export a trained diffusion model or classifier to the OpenAI guided-diffusion ``.pt`` layout.

    Args:
        checkpoint: a ``DiffusionModule`` or ``NoisyClassifierModule`` Lightning checkpoint.
        output: the ``.pt`` file to write (atomically).
        ema: export the EMA weights of a diffusion model (``false``: the raw weights).
        dtype: floating-point dtype of the exported tensors.
    """
    check_output_file(output, "output", {"the checkpoint": checkpoint}, ours=lambda path: True)
    loaded = read_training_checkpoint(checkpoint)
    if _is_ncsn_checkpoint(loaded):
        raise ValueError(f"{checkpoint!r} is an NCSNModule checkpoint: the OpenAI layout has no noise-conditional "
                         "score networks (load it with load_ncsn_checkpoint)")
    is_diffusion = _is_diffusion_checkpoint(loaded)
    if is_diffusion:
        model, _, info = diffusion_from_checkpoint(loaded, ema, checkpoint)
    else:
        model, _, info = classifier_from_checkpoint(loaded, checkpoint)
    try:
        path = export_openai_checkpoint(model, output, dtype=getattr(torch, dtype))
    except TypeError as err:
        raise ValueError(f"{checkpoint!r} holds a {type(model).__name__}, which has no OpenAI layout") from err
    weights = (("EMA" if ema else "raw") + " weights") if is_diffusion else "classifier weights"
    print(f"exported the {weights} of {checkpoint} (step {info['global_step']}) to {path}")
    return path
