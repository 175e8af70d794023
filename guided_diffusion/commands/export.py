"""``gd export``: a trained diffusion model or classifier (``.ckpt``) to the OpenAI guided-diffusion ``.pt`` layout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..atomic import check_output_file
from ..checkpoints.lightning import export
from .command import Command


@dataclass(frozen=True)
class ExportRequest:
    """A ``gd export`` run.

    Args:
        checkpoint: a ``DiffusionModule`` or ``NoisyClassifierModule`` Lightning checkpoint.
        output: the ``.pt`` file to write (atomically).
        ema: export the EMA weights of a diffusion model (``false``: the raw weights).
        dtype: floating-point dtype of the exported tensors.
        overwrite: write over an existing file (a released checkpoint and an earlier export look alike: asked).
    """

    checkpoint: str
    output: str
    ema: bool = True
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    overwrite: bool = False


def run_export(request: ExportRequest) -> Path:
    """Export a trained diffusion model or classifier to the OpenAI guided-diffusion ``.pt`` layout."""
    check_output_file(request.output, "output", {"the checkpoint": request.checkpoint}, overwrite=request.overwrite)
    return export(request.checkpoint, request.output, request.ema, request.dtype)


COMMAND = Command("export", "a trained .ckpt to the OpenAI .pt layout", ExportRequest, run_export)

__all__ = ["COMMAND", "ExportRequest", "run_export"]
