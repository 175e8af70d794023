"""Controllable generation for ``gd sample``: inpainting and colorization from an ``.npz`` of images.

``--inpaint FILE.npz``: ``arr_0`` uint8 NHWC images and ``mask`` (1 = keep, 0 = generate), shaped
(H, W), (H, W, C), (N, H, W) or (N, H, W, C). ``--colorize FILE.npz``: ``arr_0`` grey (N, H, W[, 1])
or RGB images whose channel mean is kept. Sample i is conditioned on image i mod N, so the
condition, like the noise and the label, depends only on the sample's index. The conditioning is
a guidance object (:class:`guided_diffusion.sampling.controllable.Inpainting`) appended after the
classifier / classifier-free guidance, so every sampler takes it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch

from ..images import from_uint8_nhwc
from .shards import read_npz, read_shard

ConditionKind = Literal["inpaint", "colorize"]


@dataclass
class ImageCondition:
    """Observed images in [-1, 1] (N, C, H, W) and their 0/1 mask (N or 1, C or 1, H, W)."""

    kind: ConditionKind
    images: torch.Tensor
    mask: Optional[torch.Tensor]
    source: str

    def build(self, indices: Sequence[int], process, device, generators):
        """The guidance object conditioning the samples ``indices``."""
        from ..sampling.controllable import Inpainting, colorization

        rows = torch.tensor([i % self.images.shape[0] for i in indices])
        observed = self.images[rows].to(device)
        if self.kind == "colorize":
            return colorization(observed, process, generator=generators)
        mask = self.mask if self.mask.shape[0] == 1 else self.mask[rows]
        return Inpainting(observed, mask.to(device), process, generator=generators)


def _as_nhwc(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"{what} must be (N, H, W) or (N, H, W, C), got shape {array.shape}")
    return array


def load_low_res(path: str | os.PathLike, image_size: int, channels: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The images (uint8 NHWC) and labels (``arr_1``, if any) of an ADM sample ``.npz`` to upsample, checked
    against the upsampler's low-resolution input."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the low-resolution samples {str(path)!r} do not exist")
    images, labels = read_shard(path)
    images = _as_nhwc(images, f"{path}: arr_0")
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: arr_0 must be uint8 (0..255), got {images.dtype}")
    if images.shape[1:] != (image_size, image_size, channels):
        raise ValueError(f"{path}: images are {images.shape[1]}x{images.shape[2]}x{images.shape[3]} (HxWxC) but the "
                         f"upsampler takes {image_size}x{image_size}x{channels}")
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.kind not in "iu"):
        raise ValueError(f"{path}: arr_1 must hold one integer label per image, got {labels.dtype} {labels.shape}")
    return images, labels


def load_condition(kind: ConditionKind, path: str | os.PathLike, image_size: int, channels: int) -> ImageCondition:
    """Read and check an ``--inpaint`` / ``--colorize`` file against the model's image shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--{kind} file {str(path)!r} does not exist")
    data = read_npz(path, f"--{kind} file")
    if "arr_0" not in data:
        raise ValueError(f"{path}: --{kind} needs the images as 'arr_0' (uint8 NHWC)")
    images = _as_nhwc(data["arr_0"], f"{path}: arr_0")
    mask = data.get("mask")
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: arr_0 must be uint8 (0..255), got {images.dtype}")
    if images.shape[1:3] != (image_size, image_size):
        raise ValueError(f"{path}: images are {images.shape[1]}x{images.shape[2]} but the model makes "
                         f"{image_size}x{image_size}")
    x = from_uint8_nhwc(images)
    if kind == "colorize":
        if channels != 3:
            raise ValueError(f"colorization needs an RGB model, this one makes {channels}-channel images")
        return ImageCondition(kind, x.mean(1, keepdim=True), None, str(path))
    if x.shape[1] != channels:
        raise ValueError(f"{path}: images have {x.shape[1]} channels but the model makes {channels}")
    if mask is None:
        raise ValueError(f"{path}: --inpaint needs a 'mask' array (1 = keep, 0 = generate)")
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3 and mask.shape[-1] == channels and mask.shape[:2] == (image_size, image_size):
        mask = mask.transpose(2, 0, 1)[None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    elif mask.ndim == 4:
        mask = mask.transpose(0, 3, 1, 2)
    if mask.shape[-2:] != (image_size, image_size) or mask.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"{path}: mask of shape {np.asarray(mask).shape} does not fit {x.shape[0]} images of "
                         f"{image_size}x{image_size}")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{path}: the mask must hold only 0 (generate) and 1 (keep)")
    return ImageCondition(kind, x, torch.from_numpy(mask.astype(np.float32)), str(path))
