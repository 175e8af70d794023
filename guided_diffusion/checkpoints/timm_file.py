"""A plain ``timm`` classifier from a local weights file: an off-the-shelf classifier of clean images.

:func:`load_timm_classifier` builds ``timm.create_model(arch, pretrained=False, num_classes=K, in_chans=C)`` (a name
of timm's registry; ``pretrained=False``: nothing is ever downloaded) and loads a state dict from a file read safely:
``torch.load(weights_only=True, map_location="cpu")`` (:func:`guided_diffusion.torch_files.load_torch_file`), or
``safetensors`` for a ``.safetensors`` file. Every problem is one ``ValueError`` line naming the file. The network
is ``network(x) -> logits``, for :class:`guided_diffusion.guidance.clean.CleanClassifier`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..torch_files import load_torch_file


__all__ = ["timm_head_classes", "load_timm_classifier", "read_state_dict"]

PathLike = str | os.PathLike

#: how many key names a mismatch line shows per category
_SHOWN = 3


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of a weights file: ``.safetensors`` (with ``safetensors``), else a ``torch.save`` file
    read with ``weights_only=True``. A checkpoint ``{"state_dict": {...}}`` is unwrapped, and DDP's ``module.``
    prefix removed."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"classifier weights {str(path)!r} do not exist")
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"classifier weights {str(path)!r}: reading .safetensors files needs the safetensors "
                             "package (pip install safetensors)") from None
        try:
            content: Any = load_file(str(path), device="cpu")
        except Exception as err:  # SafetensorError, OSError: a corrupt or truncated file
            raise ValueError(f"classifier weights {str(path)!r} are not a readable safetensors file "
                             f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    else:
        content = load_torch_file(path, "classifier weights", "cpu")
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not (isinstance(content, Mapping) and content
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in content.items())):
        raise ValueError(f"classifier weights {str(path)!r} are not a state dict ({{name: tensor}}, or "
                         "{'state_dict': {name: tensor}})")
    state = dict(content)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Optional[str]:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [f"{k} (file {found[k]} vs model {expected[k]})" for k in expected
                 if k in found and found[k] != expected[k]]
    parts = [f"{len(keys)} {what}: {_listing(keys)}" for keys, what in
             ((missing, "missing"), (unexpected, "unexpected"), (misshaped, "mis-shaped")) if keys]
    return "; ".join(parts) or None


def load_timm_classifier(path: PathLike, arch: str, num_classes: int, in_chans: int = 3, *,
                         model_kwargs: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """A timm classifier ``network(x) -> logits (B, num_classes)`` with the weights of ``path``, in eval mode.

    Args:
        path: the weights: a ``torch.save`` state dict (``.pth``/``.pt``/``.bin``, read with ``weights_only=True``)
            or a ``.safetensors`` file.
        arch: a timm model name (``timm.list_models()``, e.g. ``"resnet50"``; no ``hf-hub:`` names).
        num_classes: the classifier's number of classes (the size of its head in the file).
        in_chans: its input channels.
        model_kwargs: further ``timm.create_model`` arguments (e.g. ``{"img_size": 64}`` for a ViT); never
            ``pretrained`` or a pretrained config (nothing is downloaded).

    Raises:
        ValueError: an unknown name, a file that is not a state dict, or a state dict that does not fit the model
            (one line: the missing, unexpected and mis-shaped keys).
        FileNotFoundError: ``path`` does not exist.
    """
    import timm

    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be a timm model name, got {arch!r}")
    if ":" in arch:
        raise ValueError(f"timm model {arch!r}: hub names are not allowed (nothing is downloaded); give a "
                         "timm.list_models() name and a local weights file")
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm model {arch!r} (see timm.list_models())")
    _check_count(num_classes, "num_classes")
    _check_count(in_chans, "in_chans")
    model_kwargs = dict(model_kwargs or {})
    remote = sorted(set(model_kwargs) & {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay"})
    if remote:
        raise ValueError(f"model_kwargs {remote}: the weights come only from the file (nothing is downloaded)")
    state = read_state_dict(path)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    problem = _mismatch(model, state)
    if problem:
        raise ValueError(f"classifier weights {os.fspath(path)!r} do not fit timm model {arch!r} "
                         f"(num_classes={num_classes}, in_chans={in_chans}): {problem}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def timm_head_classes(path: PathLike, arch: str, in_chans: int = 3) -> int:
    """How many classes the head of timm model ``arch`` has in the weights of ``path`` (read from the shape of the
    head's weight, found by the model's own ``pretrained_cfg["classifier"]`` name)."""
    import timm

    if not isinstance(arch, str) or ":" in arch or not timm.is_model(arch):
        raise ValueError(f"unknown timm model {arch!r} (see timm.list_models(); hub names are not allowed)")
    head = timm.create_model(arch, pretrained=False, num_classes=1, in_chans=in_chans).pretrained_cfg.get("classifier")
    heads = [head] if isinstance(head, str) else list(head or [])
    state = read_state_dict(path)
    for name in heads:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.ndim >= 2:
            return int(weight.shape[0])
    raise ValueError(f"classifier weights {os.fspath(path)!r}: no head {heads} of timm model {arch!r} in the file "
                     "to read the class count from")
