"""Read any network file the project accepts, recognised by its content (not its suffix):

- this project's Lightning checkpoint (``.ckpt``: architecture and diffusion in ``hyper_parameters``);
- an exported network file (:func:`~.network_file.save_network`; the diffusion settings in its
  ``metadata["diffusion"]``);
- a released OpenAI ``.pt`` state dict (architecture from a preset, named or detected from the keys).

Every file is read once, with ``weights_only=True``; every problem is one ``ValueError`` line
naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Optional

from torch import nn

from ..diffusion import DiffusionConfig, GaussianDiffusion
from ..presets import network_kind
from ..torch_files import check_torch_file, load_torch_file
from .lightning import classifier_from_checkpoint, diffusion_from_checkpoint, is_training_checkpoint
from .network_file import is_network_file, network_from_file_content
from .openai import is_state_dict, openai_network

__all__ = ["FileKind", "LoadedNetwork", "read_network_file", "load_diffusion_model", "load_classifier",
           "load_upsampler"]

FileKind = Literal["lightning", "network", "openai"]
NetworkRole = Literal["diffusion model", "classifier", "upsampler"]
#: the registry kinds of each role
_KINDS = {"diffusion model": ("unet",), "classifier": ("encoder_unet",), "upsampler": ("superres_unet",)}
_HINTS = {"superres_unet": " (super-resolution models need a low-resolution input: --upsampler)",
          "unet": " (a base model makes images from noise; an upsampler is a super-resolution model)"}


@dataclass
class LoadedNetwork:
    """A network with the diffusion it was trained with and where it came from."""

    network: nn.Module
    diffusion: GaussianDiffusion
    source: str
    """Human-readable origin, e.g. ``"model.ckpt (step 300, EMA)"``."""
    null_label: Optional[int] = None
    """Label index meaning "no label" (classifier-free guidance), if the model was trained with one."""
    clean: bool = False
    """A classifier trained on clean images only (a ``NoisyClassifierModule`` checkpoint with ``noised: false``):
    it guides through the predicted x_0 (:func:`guided_diffusion.guidance.clean.off_the_shelf_guidance`), not at
    x_t. ``False`` for noise-aware classifiers and for every file that does not say (network files, OpenAI files)."""

    @property
    def config(self):
        return self.network.config

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(self.config, "num_classes", None)


def read_network_file(path: str | os.PathLike, what: str) -> tuple[FileKind, Any]:
    """``(kind, content)`` of a network file; ``what`` names it in errors (e.g. ``"classifier checkpoint"``)."""
    path = check_torch_file(path, what)
    content = load_torch_file(path, what, "cpu")
    if is_training_checkpoint(content):
        return "lightning", content
    if is_network_file(content):
        return "network", content
    if is_state_dict(content):
        return "openai", content
    raise ValueError(f"{what} {os.fspath(path)!r} is neither a checkpoint of this project (.ckpt), nor an "
                     "exported network file, nor an OpenAI state dict")


def _check_role(network: nn.Module, role: NetworkRole, name: str) -> None:
    kind = network_kind(network)
    if kind not in _KINDS[role]:
        article = "an" if role[0] in "aeiou" else "a"
        raise ValueError(f"{name} is a {kind!r} network, not {article} {role}{_HINTS.get(kind, '')}")


def _load(checkpoint: str | os.PathLike, role: NetworkRole, preset: Optional[str], preset_flag: str,
          ema: bool) -> LoadedNetwork:
    kind, content = read_network_file(checkpoint, f"{role} checkpoint")
    name = os.path.basename(os.fspath(checkpoint))
    if kind != "openai" and preset is not None:
        raise ValueError(f"{preset_flag} is for OpenAI .pt files; {name} carries its own architecture")
    if kind == "lightning":
        if role != "classifier":
            network, diffusion, info = diffusion_from_checkpoint(content, ema, os.fspath(checkpoint))
            _check_role(network, role, name)
            weights = "EMA" if ema else "raw"
            return LoadedNetwork(network, diffusion, f"{checkpoint} (step {info['global_step']}, {weights} weights)",
                                 info["null_label"])
        network, diffusion, info = classifier_from_checkpoint(content, os.fspath(checkpoint))
        trained_on = ", trained on clean images" if info["clean"] else ""
        return LoadedNetwork(network, diffusion, f"{checkpoint} (step {info['global_step']}{trained_on})",
                             clean=info["clean"])
    if kind == "network":
        network = network_from_file_content(content, f"network file {os.fspath(checkpoint)!r}")
        _check_role(network, role, name)
        settings = content.get("metadata", {}).get("diffusion")
        if not isinstance(settings, dict):
            raise ValueError(f"network file {name} holds no diffusion settings: save it with "
                             "metadata={'diffusion': dataclasses.asdict(DiffusionConfig(...))}")
        config = network.config
        null_label = config.num_classes if getattr(config, "null_class", False) else None
        return LoadedNetwork(network.eval(), DiffusionConfig(**settings).build(), f"{checkpoint} (network file)",
                             null_label)
    network, found = openai_network(content, preset, f"checkpoint {os.fspath(checkpoint)!r}")
    _check_role(network, role, f"{name} (preset {found.name!r})")
    return LoadedNetwork(network.eval(), found.diffusion.build(), f"{checkpoint} (OpenAI, preset {found.name})")


def load_diffusion_model(checkpoint: str | os.PathLike, preset: Optional[str] = None, ema: bool = True
                         ) -> LoadedNetwork:
    """The diffusion network of ``checkpoint`` (any kind of :func:`read_network_file`).

    Args:
        checkpoint: the file.
        preset: the preset of an OpenAI ``.pt`` (``None``: detected from its keys).
        ema: the EMA weights of a Lightning checkpoint (``False``: the raw training weights).
    """
    return _load(checkpoint, "diffusion model", preset, "--preset", ema)


def load_classifier(checkpoint: str | os.PathLike, preset: Optional[str] = None) -> LoadedNetwork:
    """The noise-aware classifier of ``checkpoint`` (any kind of :func:`read_network_file`)."""
    return _load(checkpoint, "classifier", preset, "--classifier_preset", ema=False)


def load_upsampler(checkpoint: str | os.PathLike, preset: Optional[str] = None, ema: bool = True) -> LoadedNetwork:
    """The super-resolution model (ADM-U) of ``checkpoint`` (any kind of :func:`read_network_file`)."""
    return _load(checkpoint, "upsampler", preset, "--upsampler_preset", ema)
