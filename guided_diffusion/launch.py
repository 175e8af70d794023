"""The launch option group (where a command runs: devices, processes, precision, fast paths) and the one
distributed launcher of the commands after training: Lightning Fabric.

``gd sample``, ``gd upsample``, ``gd sweep`` and ``gd evaluate`` run on :func:`LaunchOptions.fabric`: one
process per device (DDP when there are several), each process takes its own share of the work (rank r takes
batches r, r + W, r + 2W, ...), rank 0 writes what is shared. With ``strategy: ddp`` (the default for several
devices) Fabric starts the other processes by running the same command line again; ``ddp_spawn`` starts them
from this process instead.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch

from .option_groups import check_choices

Precision = Literal["32-true", "bf16-mixed", "16-mixed", "64-true", "auto"]
Strategy = Literal["auto", "ddp", "ddp_spawn"]


def native_bf16() -> bool:
    """Whether this machine's CPU computes bf16 natively (AVX512-BF16 / AMX)."""
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return bool(supported())


def resolve_precision(precision: str, accelerator: str = "cpu") -> str:
    """``auto``: bf16 autocast where it is native (CUDA GPUs with bf16, CPUs with AVX512-BF16 / AMX:
    faster), else fp32 (CPUs without native bf16 emulate it and run bf16 convolutions many times slower)."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if native_bf16() else "32-true"


@dataclass(frozen=True)
class LaunchOptions:
    """Launch: where the command runs.

    Args:
        accelerator: ``cpu``, ``gpu``, ``auto``...
        devices: processes per node (DDP when > 1).
        num_nodes: nodes of a multi-node run.
        strategy: ``auto`` (DDP when several devices), ``ddp`` (the other processes run this command line
            again) or ``ddp_spawn`` (started from this process).
        precision: ``32-true``, ``bf16-mixed`` (faster on GPUs and on CPUs with native bf16),
            ``16-mixed``, ``64-true``, or ``auto`` (bf16 where it is native, else fp32).
        timeout_minutes: DDP collective timeout (a missing peer fails instead of hanging).
        compile: ``torch.compile`` every network of the run (the first batch is slower; the images equal the
            eager ones up to float rounding).
        channels_last: NHWC memory order for the convolutions (faster on GPUs with tensor cores).
    """

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: Strategy = "auto"
    precision: Precision = "32-true"
    timeout_minutes: float = 30.0
    compile: bool = False
    channels_last: bool = False

    def __post_init__(self):
        check_choices(self)
        if self.devices < 1 or self.num_nodes < 1:
            raise ValueError(f"devices and num_nodes must be positive, got {self.devices} and {self.num_nodes}")
        if not self.timeout_minutes > 0:
            raise ValueError(f"timeout_minutes must be positive, got {self.timeout_minutes}")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def resolved_precision(self) -> str:
        """The precision the run uses (``auto`` resolved on this machine)."""
        return resolve_precision(self.precision, self.accelerator)

    def fabric(self):
        """The Fabric of this launch (not launched yet: call ``launch()`` on it, or use :func:`run`)."""
        from lightning.fabric import Fabric

        return Fabric(accelerator=self.accelerator, devices=self.devices, num_nodes=self.num_nodes,
                      strategy=self._strategy(), precision=self.resolved_precision)

    def check_available(self) -> None:
        """The accelerator and devices exist here: checked before any model loads (one line if not)."""
        disabled = logging.root.manager.disable
        try:
            logging.disable(max(disabled, logging.INFO))  # the run's own Fabric reports the precision; this checks
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fabric = self.fabric()
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"--accelerator {self.accelerator} --devices {self.devices}: {error}") from None
        finally:
            logging.disable(disabled)
        if self.resolved_precision == "16-mixed" and fabric.device.type == "cpu":
            raise ValueError("--precision 16-mixed is fp16 autocast on CUDA GPUs; on the CPU Lightning would run bf16 "
                             "instead: give --precision bf16-mixed (or 32-true)")

    @property
    def spawns(self) -> bool:
        """Whether the processes are started from this one (``ddp_spawn`` with more than one process)."""
        return self.strategy == "ddp_spawn" and self.world_size > 1

    def _strategy(self):
        if self.world_size <= 1:
            return "auto"  # one process: nothing to launch, whatever the strategy
        from lightning.fabric.strategies import DDPStrategy

        start_method = "spawn" if self.strategy == "ddp_spawn" else "popen"
        return DDPStrategy(start_method=start_method, timeout=timedelta(minutes=self.timeout_minutes))


def run(launch: LaunchOptions, function, *args):
    """``function(fabric, *args)`` on every process of ``launch``; returns what this process's call returned
    (with ``ddp_spawn``: rank 0's)."""
    fabric = launch.fabric()
    if launch.spawns:
        outcome, value = fabric.launch(_call, _Arguments(function, args))
        if outcome == "error":
            raise value  # rank 0's error, as the command line reports it (not a spawn traceback)
        return value
    fabric.launch()
    return function(fabric, *args)


class _Arguments:
    """The function and arguments of a spawned run, as one opaque object: Lightning's spawn launcher rebuilds the
    dataclasses among its arguments field by field, which frozen ones (a request, a plan) do not allow."""

    def __init__(self, function, args: tuple):
        self.function, self.args = function, args


def _call(fabric, arguments: _Arguments):
    """One spawned rank: its result, or its error as a value (every rank reaches the same verdict, so none ends
    with an exception that the launcher would turn into a traceback)."""
    try:
        return "ok", arguments.function(fabric, *arguments.args)
    except (ValueError, OSError) as error:
        return "error", error


__all__ = ["Precision", "Strategy", "LaunchOptions", "native_bf16", "resolve_precision", "run"]
