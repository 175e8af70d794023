"""Image conversions every layer shares: model range [-1, 1] NCHW to the uint8 NHWC of sample files, and grids."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .atomic import atomic_write

__all__ = ["to_uint8_nhwc", "from_uint8_nhwc", "save_grid"]


def to_uint8_nhwc(images: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1], NCHW -> uint8 NHWC, exactly as guided-diffusion's ``image_sample.py``."""
    return ((images + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def from_uint8_nhwc(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (a sample file) -> float32 NCHW in [-1, 1], as guided-diffusion's ``super_res_sample.py`` reads
    its base samples (``x / 127.5 - 1``)."""
    tensor = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    return tensor.permute(0, 3, 1, 2).float() / 127.5 - 1


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: Optional[int] = None) -> Path:
    """A PNG grid of uint8 NHWC images (at most nrow x nrow, nrow defaults to ceil(sqrt(n)))."""
    from PIL import Image
    from torchvision.utils import make_grid

    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    tensor = torch.from_numpy(np.ascontiguousarray(images[: nrow * nrow])).permute(0, 3, 1, 2)
    grid = make_grid(tensor, nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0).numpy()  # grey -> RGB
    picture = Image.fromarray(np.ascontiguousarray(grid))
    return atomic_write(path, lambda file: picture.save(file, format="PNG"))
