"""The ``gd`` command.

``gd fit|validate|test|predict`` are LightningCLI subcommands; the product commands
(``sample``, ``evaluate``, ``sweep``, ``import``, ``export``, ``demo``) are plain functions whose
signatures are the schema (jsonargparse). Each command is registered below by import path so that
``gd --help`` stays fast and a command's heavy imports happen only when it runs.
"""
from __future__ import annotations

import importlib
import sys

#: name -> "module:function". Functions take typed keyword arguments (jsonargparse ``CLI``).
COMMANDS: dict[str, str] = {
    "demo": "guided_diffusion.demo:demo",
    "sample": "guided_diffusion.generation.command:sample",
    "evaluate": "guided_diffusion.evaluation.evaluate:evaluate",
    "sweep": "guided_diffusion.sweep:sweep",
    "export": "guided_diffusion.training.checkpoint_io:export",
}

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _usage() -> str:
    names = ", ".join(list(LIGHTNING_SUBCOMMANDS) + sorted(COMMANDS))
    return f"usage: gd {{{names}}} [options]   (gd COMMAND --help for the options of one command)"


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command, rest = argv[0], argv[1:]
    if command in COMMANDS:
        from jsonargparse import CLI

        module_name, func_name = COMMANDS[command].split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        try:
            CLI(func, args=rest, as_positional=True, prog=f"gd {command}")
        except (ValueError, FileNotFoundError) as error:
            if not from_command_line:
                raise
            # bad input is reported as one line naming the problem, not a traceback
            raise SystemExit(f"gd {command}: error: {error}") from None
        return
    if command in LIGHTNING_SUBCOMMANDS:
        from guided_diffusion.training.cli import lightning_main

        lightning_main(None if from_command_line else argv)  # None: LightningCLI reads sys.argv itself
        return
    raise SystemExit(f"gd: unknown command {command!r}. {_usage()}")


if __name__ == "__main__":
    main()
