"""``gd export``: a trained diffusion model or classifier (``.ckpt``) to the OpenAI guided-diffusion ``.pt`` layout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..atomic import check_output_file
from ..checkpoints.lightning import export
from ..checkpoints.openai import is_state_dict
from ..torch_files import load_torch_file
from .command import Command


@dataclass(frozen=True)
class ExportRequest:
    """A ``gd export`` run.

    Args:
        checkpoint: a ``DiffusionModule`` or ``NoisyClassifierModule`` Lightning checkpoint.
        output: the ``.pt`` file to write (atomically).
        ema: export the EMA weights of a diffusion model (``false``: the raw weights).
        dtype: floating-point dtype of the exported tensors.
        overwrite: write over an existing file that is not an exported network (a state dict of tensors).
    """

    checkpoint: str
    output: str
    ema: bool = True
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    overwrite: bool = False


def is_exported(path: Path) -> bool:
    """Whether ``path`` holds what ``gd export`` writes: a plain state dict of tensors (read memory-mapped)."""
    try:
        return is_state_dict(load_torch_file(path, "exported network", mmap=True))
    except (OSError, ValueError):
        return False


def run_export(request: ExportRequest) -> Path:
    """Export a trained diffusion model or classifier to the OpenAI guided-diffusion ``.pt`` layout."""
    check_output_file(request.output, "output", {"the checkpoint": request.checkpoint}, ours=is_exported,
                      overwrite=request.overwrite)
    return export(request.checkpoint, request.output, request.ema, request.dtype)


COMMAND = Command("export", "a trained .ckpt to the OpenAI .pt layout", ExportRequest, run_export)

__all__ = ["COMMAND", "ExportRequest", "run_export"]
