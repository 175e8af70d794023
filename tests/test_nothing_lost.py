"""Nothing lost, part two: every class of the command probe, as rows of one table.

Each row runs ``gd`` in-process as the command line does (``one_line_errors=True``) and must end with exit code 2,
no traceback, the report as the last line on stderr starting ``gd COMMAND: error:`` (at most two lines start with
``gd``), and the working directory exactly as it was: every file that existed is byte-identical, and no file
was added (no ``config.yaml``, no W&B run, no shard, no partial file).
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import guided_diffusion.atomic as atomic_module
from guided_diffusion.commands.cli import EXIT_BAD_INPUT, main
from guided_diffusion.generation.shards import RunLock
from tests.test_generation import checkpoints  # noqa: F401  (the tiny checkpoints fixture)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mnist"
DIFFUSION_YAML = str(CONFIGS / "diffusion.yaml")
FIT = ["fit", "--config", DIFFUSION_YAML, "--trainer.logger", "false", "--trainer.max_steps", "1",
       "--trainer.enable_progress_bar", "false"]
SAMPLE = ["--num_samples", "2", "--batch_size", "2", "--steps", "ddim2", "--accelerator", "cpu", "--progress",
          "false"]


@pytest.fixture
def work(tmp_path, monkeypatch, checkpoints):  # noqa: F811
    """A working directory with the tiny checkpoints copied in and every kind of file the rows name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for name in ("diffusion", "classifier"):
        Path(f"{name}.ckpt").write_bytes(Path(checkpoints[name]).read_bytes())
    rng = np.random.default_rng(0)
    images = lambda n, size, c=1: rng.integers(0, 256, (n, size, size, c), dtype=np.uint8)  # noqa: E731
    np.savez("ref.npz", arr_0=images(10, 32), arr_1=np.arange(10))
    np.savez("samples.npz", arr_0=images(10, 32), arr_1=np.arange(10))
    np.savez("samples28.npz", arr_0=images(10, 28), arr_1=np.arange(10))
    np.savez("negative_labels.npz", arr_0=images(10, 32), arr_1=-np.ones(10, np.int64))
    np.savez("label_matrix.npz", arr_0=images(10, 32), arr_1=np.zeros((10, 2), np.int64))
    np.savez("pickled.npz", arr_0=np.array([object(), 1], dtype=object), mask=np.ones((16, 16)))
    Path("notes.txt").write_text("my notes, not a results file\n")
    foreign = {"foreign": ("samples_3x16x16x3.npz", "grid.png"), "shards_only": ("shard-00000000-00000002.npz",)}
    for folder, files in foreign.items():
        Path(folder).mkdir()
        for name in files:
            Path(folder, name).write_bytes(b"someone else's file")
    Path("corrupt_run").mkdir()
    Path("corrupt_run/run.json").write_text('{"layout": 2, "seed": ')
    Path("locked").mkdir()
    Path("outputs/mnist/diffusion/checkpoints").mkdir(parents=True)
    Path("outputs/mnist/diffusion/config.yaml").write_text("# the previous run's config\n")
    Path("outputs/mnist/diffusion/checkpoints/step=000100.ckpt").write_bytes(Path("diffusion.ckpt").read_bytes())
    state = torch.load("diffusion.ckpt", weights_only=True)
    state["hyper_parameters"]["network"] = 5  # hyper-parameters that do not read as the model's
    torch.save(state, "bad_hparams.ckpt")
    for index, name in enumerate(("a", "b", "c")):  # 3 classes for a 10-class network
        Path("three", name).mkdir(parents=True)
        from PIL import Image

        for j in range(3):
            Image.new("L", (32, 32), index * 80 + j).save(Path("three", name, f"{j}.png"))
    return tmp_path


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _disk_full(monkeypatch):
    def fsync(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_module.os, "fsync", fsync)


HELD: list[RunLock] = []


def _locked(monkeypatch):
    HELD.append(RunLock("locked").acquire())  # held by this (test) process, as another gd sample would hold it


LONG = "n" * 300
#: (class, case, arguments, the report's pattern, setup). Every row exits with EXIT_BAD_INPUT and changes nothing.
ROWS = [
    # ---- data loss: an output that is an input, or a file the command did not write
    ("loss", "json over the samples", ["evaluate", "ref.npz", "samples.npz", "--output_json", "samples.npz"],
     r"--output_json 'samples.npz' is the sample batch: it would be overwritten", None),
    ("loss", "json over the reference", ["evaluate", "ref.npz", "samples.npz", "--output_json", "./ref.npz"],
     r"--output_json 'ref.npz' is the reference batch", None),
    ("loss", "json over a foreign file", ["evaluate", "ref.npz", "samples.npz", "--output_json", "notes.txt"],
     r"'notes.txt' exists and was not written by this command.*--overwrite true", None),
    ("loss", "export over its checkpoint", ["export", "diffusion.ckpt", "diffusion.ckpt"],
     r"output 'diffusion.ckpt' is the checkpoint: it would be overwritten", None),
    ("loss", "export over another checkpoint", ["export", "diffusion.ckpt", "classifier.ckpt"],
     r"output 'classifier.ckpt' exists and was not written by this command", None),
    ("loss", "fit resumed from another module", [*FIT, "--ckpt_path", "classifier.ckpt"],
     r"--ckpt_path 'classifier.ckpt' is a NoisyClassifierModule checkpoint but the config trains a DiffusionModule",
     None),
    ("loss", "sample into a foreign folder", ["sample", "diffusion.ckpt", "--output", "foreign", *SAMPLE],
     r"--output 'foreign' holds grid.png, samples_3x16x16x3.npz but no run.json: .*--overwrite true", None),
    ("loss", "sample over foreign shards", ["sample", "diffusion.ckpt", "--output", "shards_only", *SAMPLE],
     r"holds shard-00000000-00000002.npz but no run.json", None),
    ("loss", "upsample into a foreign folder", ["upsample", "samples.npz", "diffusion.ckpt", "--output", "foreign"],
     r"--output 'foreign' holds .* but no run.json", None),
    ("loss", "fit failing on its data keeps config.yaml", [*FIT, "--data.dataset", "folder", "--data.data_dir",
                                                           "three", "--data.channels", "1"],
     r"the data has 3 classes but the network was built for num_classes=10", None),
    ("loss", "fit failing on its data starts no W&B run",
     ["fit", "--config", DIFFUSION_YAML, "--trainer.max_steps", "1", "--data.dataset", "folder", "--data.data_dir",
      "three", "--data.channels", "1"], r"the data has 3 classes", None),
    ("loss", "a second sample into a locked run", ["sample", "diffusion.ckpt", "--output", "locked", *SAMPLE],
     r"'locked' is being written by pid \d+: wait for it to finish, or sample into another directory", _locked),
    # ---- tracebacks: operating-system errors, absurd sizes
    ("traceback", "disk full while writing", ["sample", "diffusion.ckpt", "--output", "full", *SAMPLE],
     r"no space left on device writing: 'full/", _disk_full),  # the lock taken, then released with its file
    ("traceback", "file name too long (sample)", ["sample", "diffusion.ckpt", "--output", f"out/{LONG}", *SAMPLE],
     r"file name too long", None),
    ("traceback", "file name too long (evaluate)", ["evaluate", "ref.npz", "samples.npz", "--output_json",
                                                    f"{LONG}.json"], r"file name too long", None),
    ("traceback", "absurd --num_samples",
     ["sample", "diffusion.ckpt", "--output", "huge", "--num_samples", "1000000000000", "--accelerator", "cpu"],
     r"--num_samples 1000000000000: the merged samples_1000000000000x16x16x3.npz would hold .* GiB", None),
    # ---- bad input that used to exit 0
    ("exit 0", "an empty class entry", ["sample", "diffusion.ckpt", "--output", "o", "--classes", "1,,2", *SAMPLE],
     r"classes '1,,2' has an empty entry", None),
    ("exit 0", "16-mixed on the CPU", ["sample", "diffusion.ckpt", "--output", "o", "--precision", "16-mixed",
                                       *SAMPLE], r"--precision 16-mixed is fp16 autocast on CUDA GPUs", None),
    ("exit 0", "max_steps 0", [*FIT, "--trainer.max_steps", "0"], r"--trainer.max_steps 0 .* trains nothing", None),
    ("exit 0", "28 px samples against a 32 px reference",
     ["evaluate", "ref.npz", "samples28.npz", "--features", "mnist"],
     r"the samples are 28x28x1 images \(HxWxC\) but the reference batch 32x32x1", None),
    ("exit 0", "negative labels", ["evaluate", "ref.npz", "negative_labels.npz", "--features", "mnist"],
     r"'arr_1' holds negative labels", None),
    ("exit 0", "labels of another shape", ["evaluate", "ref.npz", "label_matrix.npz", "--features", "mnist"],
     r"'arr_1' has shape \(10, 2\), expected \(10,\) labels, one per image", None),
    ("exit 0", "ckpt_path last with nothing to resume", [*FIT, "--ckpt_path", "last"],
     r"--ckpt_path last: 'outputs/mnist/diffusion/checkpoints' holds step=000100.ckpt but no last.ckpt", None),
    ("message", "a checkpoint whose hyper-parameters do not fit",
     ["validate", "--config", DIFFUSION_YAML, "--trainer.logger", "false", "--ckpt_path", "bad_hparams.ckpt"],
     r"--ckpt_path 'bad_hparams.ckpt': its hyper-parameters do not read as the model's \(--model", None),
    ("exit 0", "an accelerator this machine lacks", ["sample", "diffusion.ckpt", "--output", "o", "--accelerator",
                                                     "gpu", "--num_samples", "2"], r"--accelerator gpu --devices 1: ",
     None),
    # ---- unclear messages: one line naming the option or the file
    ("message", "a scale that is not a number", ["sample", "diffusion.ckpt", "--scale", "abc"],
     r"--scale: guidance scale must be a number, got 'abc'", None),
    ("message", "an unknown schedule", ["sample", "diffusion.ckpt", "--schedule", "foo"],
     r"--schedule: expected one of constant, linear, cosine, got foo", None),
    ("message", "a misspelt network key", [*FIT, "--model.init_args.network.num_clases", "10"],
     r"--model.init_args.network.num_clases: option 'num_clases' is not accepted", None),
    ("message", "a trainer value of the wrong type", [*FIT, "--trainer.max_steps", "abc"],
     r"--trainer.max_steps: expected an integer, got abc", None),
    ("message", "a model value out of range", [*FIT, "--model.init_args.ema.rate", "2"],
     r"ema.rate must lie in \[0, 1\), got 2.0", None),
    ("message", "a corrupt run.json", ["sample", "diffusion.ckpt", "--output", "corrupt_run", *SAMPLE],
     r"'corrupt_run/run.json' \(the run's identity\) does not read back", None),
    ("message", "pickled arrays", ["sample", "diffusion.ckpt", "--output", "o", "--inpaint", "pickled.npz", *SAMPLE],
     r"'pickled.npz' holds Python objects \(pickled arrays\), which are never loaded", None),
    ("message", "a classifier given as the model", ["sample", "classifier.ckpt", "--output", "o", *SAMPLE],
     r"'classifier.ckpt' is a NoisyClassifierModule checkpoint, not a diffusion model \(a classifier: give it as "
     r"--classifier\)", None),
    ("message", "a renamed demo option", ["demo", "--wandb", "disabled"],
     r"--wandb is not an option of gd demo: use --wandb_mode", None),
    ("message", "a renamed sweep option", ["sweep", "diffusion.ckpt", "ref.npz", "--eval_device", "cpu"],
     r"--eval_device is not an option of gd sweep: use --device", None),
    ("message", "guidance without its classifier, before loading",
     ["sample", "diffusion.ckpt", "--guidance", "classifier"],
     r"classifier guidance needs --classifier PATH", None),
]


@pytest.mark.parametrize("kind,case,argv,line,setup", ROWS, ids=[f"{kind}: {case}" for kind, case, *_ in ROWS])
def test_each_class_ends_in_one_line_and_loses_nothing(work, capsys, monkeypatch, kind, case, argv, line, setup):
    if setup is not None:
        setup(monkeypatch)
    before = _snapshot(work)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(list(argv), one_line_errors=True)
        after = _snapshot(work)
    finally:
        while HELD:
            HELD.pop().release()
    err = capsys.readouterr().err
    assert exit_info.value.code == EXIT_BAD_INPUT, (case, err)
    assert "Traceback" not in err, err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"gd {argv[0]}: error: ") and re.search(line, last), (case, err)
    assert sum(text.startswith("gd ") for text in err.splitlines()) <= 2, err
    assert {name: after.get(name) for name in before} == before, "a file that existed before changed"
    assert sorted(set(after) - set(before)) == [], "the refused command wrote files"


def test_overwrite_true_writes_where_a_refusal_would_stop(work, capsys):
    """The refusals name ``--overwrite true``; with it the command writes there (and only then)."""
    main(["evaluate", "ref.npz", "samples.npz", "--features", "mnist", "--output_json", "notes.txt",
          "--overwrite", "true", "--progress", "false"], one_line_errors=True)
    assert '"metrics"' in Path("notes.txt").read_text()
    main(["evaluate", "ref.npz", "samples.npz", "--features", "mnist", "--output_json", "notes.txt",
          "--progress", "false"], one_line_errors=True)  # now its own results file: rewritten without asking
    main(["export", "diffusion.ckpt", "exported.pt"], one_line_errors=True)
    with pytest.raises(SystemExit):  # an earlier export and a released checkpoint look alike: asked
        main(["export", "diffusion.ckpt", "exported.pt"], one_line_errors=True)
    assert "exists and was not written by this command" in capsys.readouterr().err
    main(["export", "diffusion.ckpt", "exported.pt", "--overwrite", "true"], one_line_errors=True)
    assert torch.load("exported.pt", weights_only=True)


def test_the_library_calls_never_write_over_their_inputs(work):
    from guided_diffusion.checkpoints import export as export_checkpoint
    from guided_diffusion.evaluation import evaluate

    with pytest.raises(ValueError, match="output_json 'samples.npz' is the sample batch"):
        evaluate("ref.npz", "samples.npz", features="mnist", output_json="samples.npz")
    with pytest.raises(ValueError, match="output 'diffusion.ckpt' is the checkpoint"):
        export_checkpoint("diffusion.ckpt", "diffusion.ckpt")


def test_ckpt_path_last_on_a_first_launch_starts_the_run(tmp_path, monkeypatch):
    """A script that always passes ``--ckpt_path last`` works on its first launch (nothing there yet)."""
    monkeypatch.chdir(tmp_path)
    main([*FIT, "--ckpt_path", "last"], one_line_errors=True)
    assert Path("outputs/mnist/diffusion/checkpoints/last.ckpt").is_file()


def test_the_run_lock_is_released_with_the_process(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    lock = RunLock(run).acquire()
    with pytest.raises(ValueError, match=r"is being written by pid %d" % os.getpid()):
        RunLock(run).acquire()
    lock.release()
    assert not run.exists()  # the run wrote nothing: its lock file and empty directory are gone
    RunLock(run).acquire().release()  # free again
    import fcntl

    def unsupported(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)  # a file system without locks: the run goes on, warned
    RunLock(run).acquire().release()
    assert "cannot be locked on this file system (No locks available)" in capsys.readouterr().out
