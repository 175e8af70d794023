"""The ``gd`` command.

``gd fit|validate|test|predict`` are LightningCLI subcommands; the product commands (``sample``, ``upsample``,
``evaluate``, ``sweep``, ``export``, ``demo``, ``prepare``) are :class:`~guided_diffusion.commands.command.Command` s:
a request made of option groups (the schema of their command lines) and the function that runs it. Each command is
registered below by module so that ``gd --help`` stays fast and a command's heavy imports happen only when it
runs.

Bad input (a missing or malformed file, an impossible setting) ends any command with one line
``gd COMMAND: error: ...`` on stderr and exit code 2; ``--debug`` (or ``GD_DEBUG=1``) shows the
traceback instead. A training run stopped by SIGTERM exits with 143 (Ctrl-C: 130) after saving the
step it reached (:class:`guided_diffusion.training.run_state.RunCheckpoint`).
"""
from __future__ import annotations

import importlib
import os
import sys

#: name -> (the module whose ``COMMAND`` it is, one line of help; equal to ``COMMAND.summary``, tested).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("guided_diffusion.commands.demo", "train, guide, sample and score on the embedded MNIST (the main job)"),
    "sample": ("guided_diffusion.commands.sample",
               "class-conditional samples, optionally guided, into resumable shards and an ADM .npz"),
    "upsample": ("guided_diffusion.commands.upsample",
                 "upsample the images of a sample .npz with a super-resolution model (ADM-U)"),
    "evaluate": ("guided_diffusion.commands.evaluate",
                 "FID / sFID / IS / precision / recall of a sample .npz against a reference"),
    "sweep": ("guided_diffusion.commands.sweep", "sample and evaluate over guidance scales and samplers"),
    "export": ("guided_diffusion.commands.export", "a trained .ckpt to the OpenAI .pt layout"),
    "prepare": ("guided_diffusion.commands.prepare",
                "decode and resize an image folder once into LitData chunks to stream (ImageNet)"),
}

LIGHTNING_SUBCOMMANDS: dict[str, str] = {
    "fit": "train a diffusion model, classifier or NCSN from a config (resume: --ckpt_path last)",
    "validate": "run the validation loop of a config on a checkpoint",
    "test": "run the test loop of a config on a checkpoint",
    "predict": "run the predict loop of a config on a checkpoint",
}

#: Exit codes: bad input (as argparse), SIGTERM and Ctrl-C (128 + signal number, as a shell reports them).
EXIT_BAD_INPUT, EXIT_SIGTERM, EXIT_INTERRUPT = 2, 143, 130
DEBUG_FLAG, DEBUG_ENV = "--debug", "GD_DEBUG"


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input or a machine that cannot do what was asked (their messages name the
    problem) rather than a bug: a bad value, a missing or unreadable file, an operating-system error while reading
    or writing (no space left on the device, a file name too long, a read-only file system), too little memory."""
    errors: tuple[type[BaseException], ...] = (ValueError, OSError, MemoryError)
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning is not None:  # only if Lightning was imported by the command
        errors += (lightning.MisconfigurationException,)
    return errors


def _usage() -> str:
    names = ", ".join(list(LIGHTNING_SUBCOMMANDS) + sorted(COMMANDS))
    return f"usage: gd {{{names}}} [options]   (gd COMMAND --help for the options of one command)"


def _help() -> str:
    rows = {**LIGHTNING_SUBCOMMANDS, **{name: line for name, (_, line) in sorted(COMMANDS.items())}}
    width = max(map(len, rows))
    lines = [_usage(), "", "Guided diffusion (ADM / improved DDPM / DDIM / score SDEs) with Lightning.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {line}" for name, line in rows.items()]
    lines += ["", f"{DEBUG_FLAG} (or {DEBUG_ENV}=1): show the traceback of an error instead of its one line."]
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, one_line_errors: bool | None = None) -> None:
    """``gd COMMAND ...``.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        one_line_errors: report bad input as one line and ``SystemExit(2)`` (default: only when
            run from the command line; called with ``argv``, e.g. from a test, errors propagate).
    """
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if not argv:
        print(_usage(), file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)
    if argv[0] in ("-h", "--help"):
        print(_help())
        return
    command = argv[0]
    if command not in COMMANDS and command not in LIGHTNING_SUBCOMMANDS:
        print(f"gd: error: unknown command {command!r}\n{_usage()}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)
    try:
        _run(command, argv[1:], from_command_line)
    except BaseException as error:  # noqa: BLE001  (classified below; anything else is re-raised)
        if not (from_command_line if one_line_errors is None else one_line_errors) or debug:
            raise
        code = _exit_code(error)
        if code is None:
            raise
        print(f"gd {command}: {_describe(error)}", file=sys.stderr)
        raise SystemExit(code) from None


def _run(command: str, rest: list[str], from_command_line: bool) -> None:
    if command in COMMANDS:
        spec = importlib.import_module(COMMANDS[command][0]).COMMAND
        spec.run(spec.parse(rest))
        return
    from guided_diffusion.commands.fit import lightning_main

    # None: LightningCLI reads sys.argv itself (DDP re-launches the same command line)
    lightning_main(None if from_command_line else [command, *rest])


def _exit_code(error: BaseException) -> int | None:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return None  # a network or peer failure is not bad input: its traceback says where
    if type(error).__name__ == "SIGTERMException":
        return EXIT_SIGTERM
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPT
    if isinstance(error, bad_input_errors()):
        return EXIT_BAD_INPUT
    return None


def _describe(error: BaseException) -> str:
    if type(error).__name__ == "SIGTERMException":
        return ("stopped by SIGTERM; the step it reached is saved as last.ckpt (resume with --ckpt_path last)")
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(error, MemoryError):
        return f"error: out of memory{': ' + str(error) if str(error) else ''} (fewer samples per batch or file?)"
    if isinstance(error, OSError) and error.strerror:
        where = f" {error.filename!r}" if error.filename else ""
        return f"error: {error.strerror.lower()}:{where}" if where else f"error: {error.strerror.lower()}"
    from .command import one_line

    return f"error: {one_line(error)}"


if __name__ == "__main__":
    main()
