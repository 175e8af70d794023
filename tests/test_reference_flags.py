"""The reference README's sampling commands through ``gd sample``: guided-diffusion's flags mapped onto the
project's options, its architecture flags checked against the files."""
from __future__ import annotations

import shlex

import numpy as np
import pytest

from guided_diffusion.commands.cli import main as gd
from guided_diffusion.generation.reference_flags import translate
from tests.test_generation import checkpoints, read  # noqa: F401  (the tiny checkpoints fixture)

MODEL_FLAGS = ("--attention_resolutions 8 --class_cond True --diffusion_steps 100 --image_size 16 --learn_sigma True "
               "--noise_schedule cosine --num_channels 32 --channel_mult 1,2 --num_head_channels 32 "
               "--num_res_blocks 1 --use_fp16 True --use_scale_shift_norm True")


def test_the_reference_readme_command_maps_onto_gd_sample_options():
    args = shlex.split(f"{MODEL_FLAGS} --classifier_scale 1.0 --classifier_path c.pt --classifier_depth 4 "
                       "--model_path m.pt --batch_size 4 --num_samples 100 --timestep_respacing ddim25 --use_ddim True")
    out, note = translate(args)
    assert out[0] == "m.pt"
    pairs = dict(zip(out[1::2], out[2::2]))
    assert pairs["--scale"] == "1.0" and pairs["--classifier"] == "c.pt" and pairs["--steps"] == "ddim25"
    assert pairs["--sampler"] == "ddim" and pairs["--batch_size"] == "4" and pairs["--classes"] == "random"
    flags = next(arg for arg in out if arg.startswith("--model_flags="))
    assert "--num_channels 32" in flags and "--use_fp16" not in flags and "--image_size 16" in flags
    assert any(arg.startswith("--classifier_flags=") and "--classifier_depth 4" in arg for arg in out)
    assert "--classifier_scale -> --scale" in note and "--use_ddim True -> --sampler ddim" in note
    assert "--use_fp16 ignored" in note
    ddpm, note = translate(["--model_path", "m.pt", "--diffusion_steps", "4000"])
    assert ddpm[ddpm.index("--sampler") + 1] == "ddpm" and ddpm[ddpm.index("--steps") + 1] == "4000"
    assert "every step, as the reference" in note
    with pytest.raises(ValueError, match="--use_ddim expects True or False"):
        translate(["--model_path", "m.pt", "--use_ddim", "maybe"])


def test_a_reference_command_line_runs_through_gd_sample(checkpoints, tmp_path, capsys):  # noqa: F811
    reference = shlex.split(f"sample {MODEL_FLAGS} --classifier_scale 2.0 --classifier_path "
                            f"{checkpoints['classifier']} --model_path {checkpoints['diffusion']} --batch_size 3 "
                            "--num_samples 5 --timestep_respacing ddim4 --use_ddim True")
    gd(reference + ["--output", str(tmp_path / "reference"), "--accelerator", "cpu", "--progress", "false"])
    out = capsys.readouterr().out
    assert "gd sample: guided-diffusion flags: --model_path -> CHECKPOINT" in out
    ours = ["sample", checkpoints["diffusion"], "--classifier", checkpoints["classifier"], "--scale", "2",
            "--sampler", "ddim", "--steps", "ddim4", "--batch_size", "3", "--num_samples", "5", "--classes", "random",
            "--output", str(tmp_path / "ours"), "--accelerator", "cpu", "--progress", "false"]
    gd(ours)
    a, b = read(tmp_path / "reference" / "samples_5x16x16x3.npz"), read(tmp_path / "ours" / "samples_5x16x16x3.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


@pytest.mark.parametrize("flags, message", [
    ("--num_channels 64", r"num_channels|model_channels 64 \(the file: 32\)"),
    ("--diffusion_steps 1000", "do not give the file's noise process"),
    ("--class_cond False", r"num_classes None \(the file: 4\)"),
])
def test_architecture_flags_that_contradict_the_file_are_one_clear_error(checkpoints, tmp_path, flags,  # noqa: F811
                                                                         message):
    base = {key: value for key, value in zip(MODEL_FLAGS.split()[::2], MODEL_FLAGS.split()[1::2])}
    base.update(zip(flags.split()[::2], flags.split()[1::2]))
    args = ["sample", "--model_path", checkpoints["diffusion"], *[w for pair in base.items() for w in pair],
            "--output", str(tmp_path / "out"), "--num_samples", "2", "--timestep_respacing", "ddim2",
            "--accelerator", "cpu", "--progress", "false"]
    with pytest.raises(ValueError, match=message):
        gd(args)
    assert not (tmp_path / "out").exists()


def test_classifier_flags_are_read_before_any_model_loads(checkpoints, tmp_path, monkeypatch):  # noqa: F811
    """The reference builds classifiers for 64-512 px only (its channel_mult table): flags for a 16 px one are refused
    as the reference would, before the model files are read."""
    import guided_diffusion.commands.sample as command

    monkeypatch.setattr(command, "load_diffusion_model", lambda *a, **k: pytest.fail("a model was loaded"))
    args = ["sample", "--model_path", checkpoints["diffusion"], "--classifier_path", checkpoints["classifier"],
            "--image_size", "16", "--classifier_width", "32", "--classifier_depth", "1",
            "--classifier_attention_resolutions", "8", "--output", str(tmp_path / "out"), "--num_samples", "2",
            "--timestep_respacing", "ddim2", "--accelerator", "cpu", "--progress", "false"]
    with pytest.raises(ValueError, match="no default channel_mult for image_size=16"):
        gd(args)
