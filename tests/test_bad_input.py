"""Bad input, command by command: the exit code, the one line printed, and nothing already written changed.

Every case runs ``gd`` in-process as the command line does (``one_line_errors=True``): the error
must be one line naming the problem on stderr, never a traceback and never PyTorch's advice to
retry with ``weights_only=False``; the files that existed before the command are untouched.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.atomic import atomic_write_json, check_output_directory
from guided_diffusion.commands.cli import EXIT_BAD_INPUT, main

DIFFUSION_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "mnist" / "diffusion.yaml")


class Evil:
    """A pickle that would run ``print`` when loaded without ``weights_only``."""

    def __reduce__(self):
        return print, ("this must never run",)


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A working directory holding every kind of bad file the table refers to."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    torch.save({"state_dict": {"w": torch.randn(64, 64)}, "hyper_parameters": {"network": {}}}, "good.ckpt")
    whole = Path("good.ckpt").read_bytes()
    Path("half.ckpt").write_bytes(whole[: len(whole) // 2])
    Path("empty.ckpt").write_bytes(b"")
    Path("text.ckpt").write_text("not a checkpoint\n")
    Path("random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()[1:] + b"x")
    torch.save({"state_dict": {}, "payload": Evil()}, "evil.ckpt")
    Path("folder").mkdir()
    Path("file.txt").write_text("a file where a directory is expected\n")
    Path("no_images").mkdir()
    for name in ("a", "b"):
        (Path("empty_classes") / name).mkdir(parents=True)
    for index, name in enumerate(("cat", "dog", "fox")):  # 3 classes for a 10-class network
        (Path("three") / name).mkdir(parents=True)
        for j in range(4):
            Image.new("RGB", (32, 32), (index * 80, j * 60, 0)).save(Path("three") / name / f"{j}.png")
    for digit in range(10):  # 10 classes, as the network; one file cut short
        (Path("corrupt") / str(digit)).mkdir(parents=True)
        for j in range(2):
            Image.new("L", (32, 32), j * 60 + digit).save(Path("corrupt") / str(digit) / f"{j}.png")
    Path("corrupt/0/0.png").write_bytes(Path("corrupt/0/1.png").read_bytes()[:40])  # truncated PNG
    return tmp_path


FIT = ["fit", "--config", DIFFUSION_YAML, "--trainer.logger", "false", "--trainer.max_steps", "1",
       "--trainer.enable_progress_bar", "false"]
FOLDER = ["--data.dataset", "folder", "--data.channels", "1", "--data.batch_size", "2"]

#: (case, arguments, the line stderr must contain). Every case exits with EXIT_BAD_INPUT.
CASES = [
    ("no arguments", [], r"usage: gd \{fit, validate"),
    ("unknown command", ["frobnicate"], r"unknown command 'frobnicate'"),
    ("missing checkpoint", ["sample", "missing.ckpt"], r"diffusion model checkpoint 'missing.ckpt' does not exist"),
    ("folder as checkpoint", ["sample", "folder"], r"'folder' is a directory, not a file"),
    ("empty checkpoint", ["sample", "empty.ckpt"], r"'empty.ckpt' is empty \(0 bytes\)"),
    ("text as checkpoint", ["sample", "text.ckpt"], r"'text.ckpt' is not a PyTorch file"),
    ("random bytes", ["sample", "random.pt"], r"'random.pt' is not a PyTorch file"),
    ("truncated checkpoint", ["sample", "half.ckpt"], r"'half.ckpt' is truncated or corrupt"),
    ("code in a pickle", ["sample", "evil.ckpt"],
     r"refusing to load diffusion model checkpoint 'evil.ckpt'.*\(print\)"),
    ("empty classifier", ["sample", "good.ckpt", "--classifier", "empty.ckpt"],  # checked before any model loads
     r"classifier checkpoint 'empty.ckpt' is empty"),
    ("output is a file", ["sample", "missing.ckpt", "--output", "file.txt"],  # checked before the model
     r"output 'file.txt' is a file, not a directory"),
    ("output under a file", ["sample", "missing.ckpt", "--output", "file.txt/run"],
     r"output 'file.txt/run' lies under 'file.txt', which is a file"),
    ("scale nan", ["sample", "good.ckpt", "--scale", "nan"], r"guidance scale must be finite and non-negative"),
    ("negative scale", ["sweep", "good.ckpt", "ref.npz", "--scales", "[0,-1]"], r"guidance scale must be finite"),
    ("export truncated", ["export", "half.ckpt", "out.pt"], r"'half.ckpt' is truncated or corrupt"),
    ("fit: missing folder", [*FIT, *FOLDER, "--data.data_dir", "nowhere"], r"data_dir 'nowhere' does not exist"),
    ("fit: no images", [*FIT, *FOLDER, "--data.data_dir", "no_images"], r"'no_images' contains no image files"),
    ("fit: empty class folders", [*FIT, *FOLDER, "--data.data_dir", "empty_classes"],
     r"'empty_classes' contains no image files"),
    ("fit: class count", [*FIT, *FOLDER, "--data.data_dir", "three"],
     r"the data has 3 classes but the network was built for num_classes=10"),
    ("fit: on_bad_image raise", [*FIT, *FOLDER, "--data.data_dir", "corrupt", "--data.on_bad_image", "raise",
                                 "--data.val_fraction", "0", "--data.batch_size", "20"],  # a batch of every file
     r"cannot read image corrupt/0/0.png"),
    ("fit: refused ckpt_path", [*FIT, "--ckpt_path", "evil.ckpt"], r"refusing to load --ckpt_path checkpoint"),
    ("fit: folder as ckpt_path", [*FIT, "--ckpt_path", "folder"], r"'folder' is a directory, not a file"),
    ("fit: truncated ckpt_path", [*FIT, "--ckpt_path", "half.ckpt"], r"'half.ckpt' is truncated or corrupt"),
    ("validate: text ckpt_path", ["validate", "--config", DIFFUSION_YAML, "--trainer.logger", "false",
                                  "--ckpt_path", "text.ckpt"], r"'text.ckpt' is not a PyTorch file"),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()[:64])
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case,argv,line", CASES, ids=[case for case, _, _ in CASES])
def test_bad_input_is_one_line_and_loses_nothing(files, capsys, case, argv, line):
    before = _snapshot(files)
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv), one_line_errors=True)
    err = capsys.readouterr().err
    assert exit_info.value.code == EXIT_BAD_INPUT, (case, err)
    assert "Traceback" not in err and "weights_only=False" not in err, err
    assert "this must never run" not in err + capsys.readouterr().out
    matching = [text for text in err.splitlines() if re.search(line, text)]
    assert matching, (case, err)
    if argv and argv[0] in ("sample", "sweep", "export", "fit", "validate") and "scale" not in case:
        # the report is the last line on stderr (a library's warnings may come before it), and one line
        assert err.splitlines()[-1] == matching[-1] and matching[-1].startswith(f"gd {argv[0]}: error: "), err
        assert len(matching) == 1, err
    after = _snapshot(files)
    assert {k: after.get(k) for k in before} == before, "a file that existed before the command changed"


def test_debug_shows_the_traceback(files):
    with pytest.raises(ValueError, match="is truncated or corrupt"):
        main(["sample", "half.ckpt", "--debug"], one_line_errors=True)


def test_help_lists_every_command_with_a_line(capsys):
    from guided_diffusion.commands.cli import COMMANDS, LIGHTNING_SUBCOMMANDS

    main(["--help"])
    out = capsys.readouterr().out
    for name, line in [*LIGHTNING_SUBCOMMANDS.items(), *((n, h) for n, (_, h) in COMMANDS.items())]:
        assert any(row.split() and row.split()[0] == name and line in row for row in out.splitlines()), name


def test_unwritable_output_is_reported_before_work(tmp_path, monkeypatch):
    """As root, a mode-0555 directory is still writable, so the refusal is simulated at the probe."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match=r"output '.*ro' cannot be written \(permission denied\)"):
        check_output_directory(tmp_path / "ro")


def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "report.json", {"a": 1})
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o002)
        assert atomic_write_json(tmp_path / "other.json", {"a": 1}).stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(previous)
