"""The command layer on option groups: every option declared once (a field of one group), taken by every command
that takes the group, the same request from the command line and from Python, bad input in one line."""
from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from guided_diffusion.commands.cli import COMMANDS
from guided_diffusion.commands.command import one_line
from guided_diffusion.evaluation.options import EvaluationOptions
from guided_diffusion.generation.request import PlanOptions, SampleRequest
from guided_diffusion.guidance import GuidanceOptions
from guided_diffusion.launch import LaunchOptions
from guided_diffusion.option_groups import build_request, flat_names, flatten, groups_of
from guided_diffusion.sampling.options import SamplerOptions
from guided_diffusion.tracking import TrackingOptions

ROOT = Path(__file__).resolve().parents[1]


def command(name):
    return importlib.import_module(COMMANDS[name][0]).COMMAND


def help_text(name) -> str:
    return command(name).parser().format_help()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_is_a_request_of_groups_with_its_summary(name):
    spec = command(name)
    assert spec.name == name and spec.summary == COMMANDS[name][1]
    names = flat_names(spec.request_type, spec.skip)  # raises if two options share a name
    text = help_text(name)
    for option in names:
        if option not in spec.positionals:
            assert f"--{option}" in text, (name, option)
    for skipped in spec.skip:
        group, field = skipped.split(".")
        assert field in {f.name for f in dataclasses.fields(groups_of(spec.request_type)[group])}, skipped


@pytest.mark.parametrize("group,commands", [
    (GuidanceOptions, ("sample", "sweep", "demo")),
    (SamplerOptions, ("sample", "upsample", "sweep", "demo")),
    (LaunchOptions, ("sample", "upsample", "sweep", "evaluate", "demo")),
    (TrackingOptions, ("sample", "upsample", "sweep", "evaluate", "demo")),
    (EvaluationOptions, ("sweep", "evaluate")),
    (PlanOptions, ("sample", "upsample", "sweep")),
])
def test_an_option_of_a_group_appears_in_every_command_that_takes_the_group(group, commands):
    """A field added to a group is an option of each of these commands (unless the command names it as skipped)."""
    for name in commands:
        spec = command(name)
        attribute = next(a for a, g in groups_of(spec.request_type).items() if g is group)
        taken = flat_names(spec.request_type, spec.skip)
        for field in dataclasses.fields(group):
            assert field.name in taken or f"{attribute}.{field.name}" in spec.skip, (name, field.name)


def test_each_option_is_declared_in_one_group_only():
    groups = [GuidanceOptions, SamplerOptions, LaunchOptions, TrackingOptions, EvaluationOptions, PlanOptions]
    declared = [f.name for group in groups for f in dataclasses.fields(group)]
    # one name twice: the sampling batch (plan) and the feature batch (evaluation); gd sweep takes the first
    assert {name for name in declared if declared.count(name) > 1} == {"batch_size"}
    # the guidance scale is validated in one place: the group (not by the commands)
    sources = "\n".join(p.read_text() for p in (ROOT / "guided_diffusion" / "commands").glob("*.py"))
    assert "check_scale(request" not in sources and "ClassifierGuidance(" not in sources


def test_the_command_line_and_python_give_the_same_request():
    spec = command("sample")
    argv = ["model.ckpt", "--output", "out", "--classifier", "c.ckpt", "--scale", "3", "--schedule", "cosine",
            "--guidance_interval", "0,600", "--sampler", "dpm-solver", "--steps", "15", "--order", "1",
            "--num_samples", "40", "--batch_size", "8", "--classes", "1,7", "--seed", "4", "--noise", "philox",
            "--devices", "1", "--precision", "bf16-mixed", "--wandb_project", "p", "--log_artifacts", "true"]
    parsed = spec.parse(argv)
    called = spec.request("model.ckpt", output="out", classifier="c.ckpt", scale=3, schedule="cosine",
                          guidance_interval="0,600", sampler="dpm-solver", steps="15", order=1, num_samples=40,
                          batch_size=8, classes="1,7", seed=4, noise="philox", devices=1, precision="bf16-mixed",
                          wandb_project="p", log_artifacts=True)
    assert parsed == called
    assert parsed.guidance.scale == 3.0 and parsed.sampler.kwargs()["order"] == 1 and parsed.plan.batch_size == 8
    assert flatten(parsed)["schedule"] == "cosine"
    assert build_request(SampleRequest, flatten(parsed)) == parsed  # flat names and groups: a round trip


def test_a_config_file_holds_the_same_flat_options(tmp_path):
    (tmp_path / "run.yaml").write_text("scale: 2.5\nsteps: ddim10\nnum_samples: 12\ncompile: true\n")
    request = command("sample").parse(["model.ckpt", "--config", str(tmp_path / "run.yaml"), "--seed", "3"])
    assert (request.guidance.scale, request.sampler.steps, request.plan.num_samples, request.launch.compile,
            request.plan.seed) == (2.5, "ddim10", 12, True, 3)


def test_each_command_keeps_its_own_defaults():
    assert command("sample").request("m.ckpt").plan == PlanOptions(num_samples=100, batch_size=25, classes="all")
    assert command("upsample").request("low.npz", "up.ckpt").plan.num_samples is None
    assert command("upsample").request("low.npz", "up.ckpt").output.output == "outputs/upsampled"
    sweep = command("sweep").request("m.ckpt", "ref.npz")
    assert (sweep.plan.num_samples, sweep.plan.batch_size, sweep.plan.classes) == (1000, 50, "random")
    assert sweep.points.scales == (0.0, 0.5, 1.0, 2.0, 4.0, 10.0)
    demo = command("demo").request()
    assert demo.launch.precision == "auto" and demo.launch.accelerator == "cpu"
    assert demo.tracking.wandb_project == "guided-diffusion-demo"


def test_a_run_identity_keeps_its_earlier_form():
    """``run.json`` of runs made before the groups: a resumed run must find the same identity."""
    request = command("sample").request("m.ckpt", classifier="c.ckpt", scale=2.0)
    assert request.guidance.identity() == {
        "guidance": "auto", "scale": 2.0,
        "guidance_options": {"schedule": "constant", "interval": None, "interval_in": "t", "temperature": 1.0,
                             "gradient_at": "x_t", "every": 1, "cfg_scale": None, "cfg_interval": None}}
    assert request.sampler.identity() == {"sampler": "ddim", "steps": "ddim25", "eta": 0.0, "clip_denoised": True}
    assert SamplerOptions("dpm-solver").identity()["steps"] == "20"
    assert SamplerOptions("dpm-solver", order=1).identity()["order"] == 1  # new settings only when set


@pytest.mark.parametrize("name,argv,line", [
    ("sample", ["m.ckpt", "--scale", "abc"], "--scale: guidance scale must be a number, got 'abc'"),
    ("sample", ["m.ckpt", "--scale", "nan"], "--scale: guidance scale must be finite and non-negative"),
    ("sample", ["m.ckpt", "--num_samples", "x"], "--num_samples: expected an integer, got 'x'"),
    ("sample", ["m.ckpt", "--guidance", "foo"], "--guidance: expected one of auto, none, classifier, "
                                                "classifier-free, training-free, got foo"),
    ("sample", ["m.ckpt", "--sampler", "pc", "--eta", "0.5"], "eta is an option of ddim; sampler 'pc' does not"),
    ("sample", ["m.ckpt", "--order", "3"], "--order: expected one of 1, 2"),
    ("sample", ["m.ckpt", "--num_samples", "0"], "num_samples and batch_size must be positive"),
    ("sample", ["m.ckpt", "--seed", "-1"], "--seed must be a non-negative integer"),
    ("sample", ["m.ckpt", "--inpaint", "a.npz", "--colorize", "b.npz"], "--inpaint and --colorize are exclusive"),
    ("sample", ["m.ckpt", "--upsampler_steps", "10"], "need --upsampler CKPT"),
    ("sample", ["m.ckpt", "--frobnicate", "1"], "unrecognized arguments: --frobnicate 1"),
    ("sample", ["m.ckpt", "--devices", "0"], "devices and num_nodes must be positive"),
    ("sample", ["m.ckpt", "--guidance", "classifier"], "classifier guidance needs --classifier PATH"),
    ("sample", ["m.ckpt", "--schedule", "cosine"], "shape classifier guidance: give --classifier PATH"),
    ("sample", ["m.ckpt", "--classifier", "c.ckpt", "--guidance", "none"], "a classifier was given but guidance"),
    ("sample", ["m.ckpt", "--wandb_mode", "sometimes"], "--wandb_mode: expected one of offline, online, disabled"),
    ("sample", ["m.ckpt", "--log_artifacts", "true"], "--log_artifacts needs --wandb_project"),
    ("sweep", ["m.ckpt", "r.npz", "--eval_device", "cuda"], "--eval_device is not an option of gd sweep: use --device"),
    ("sweep", ["m.ckpt", "r.npz", "--scale", "2"], "--scale is not an option of gd sweep: use --scales"),
    ("sweep", ["m.ckpt", "r.npz", "--scales", "[1,-2]"], "guidance scale must be finite and non-negative"),
    ("sweep", ["m.ckpt", "r.npz", "--num_samples", "3"], "num_samples=3 is too few for precision/recall"),
    ("sweep", ["m.ckpt", "r.npz", "--samplers", "[ddpm]", "--eta", "0.5"], "eta is an option of ddim"),
    ("demo", ["--wandb", "disabled"], "--wandb is not an option of gd demo: use --wandb_mode"),
    ("demo", ["--devices", "2"], "unrecognized arguments: --devices 2"),
    ("demo", ["--preset", "short"], "--preset: expected one of default, long"),
    ("demo", ["--guidance", "classifier-free"], "a classifier was given but guidance is 'classifier-free'"),
    ("evaluate", ["r.npz", "s.npz", "--log_artifacts", "true", "--wandb_project", "p"],
     "--log_artifacts logs the results JSON: give --output_json PATH"),
    ("evaluate", ["r.npz", "s.npz", "--compile", "true"], "unrecognized arguments: --compile true"),
])
def test_bad_options_are_one_line_naming_the_option(name, argv, line):
    with pytest.raises(ValueError) as error:
        command(name).parse(argv)
    message = str(error.value)
    assert "\n" not in message and line in message, message


def test_python_keywords_are_checked_like_the_command_line():
    with pytest.raises(ValueError, match="unknown option --frobnicate"):
        command("sample").request("m.ckpt", frobnicate=1)
    with pytest.raises(ValueError, match="--scale is not an option here: use --scales"):  # swept by gd sweep
        command("sweep").request("m.ckpt", "r.npz", scale=2.0)
    with pytest.raises(ValueError, match="--eval_device is not an option here: use --device"):
        command("sweep").request("m.ckpt", "r.npz", eval_device="cpu")
    with pytest.raises(ValueError, match="--strategy: expected one of auto, ddp, ddp_spawn, got 'dpp'"):
        command("sample").request("m.ckpt", strategy="dpp")  # a Literal is checked for Python callers too
    with pytest.raises(ValueError, match="--features: expected one of inception, mnist"):
        command("evaluate").request("r.npz", "s.npz", features="clip")
    with pytest.raises(TypeError, match="takes 1 positional"):
        command("sample").request("m.ckpt", "out")


def test_a_sweep_builds_sample_requests_from_its_own_groups():
    sweep = command("sweep").request("m.ckpt", "r.npz", scales=[0, 2], samplers=["ddim", "ddpm"],
                                     steps=["ddim5"], intervals=["none", "0,500"], temperature=2.0, num_samples=20,
                                     classifier="c.ckpt", precision="bf16-mixed", noise="philox")
    points = [sweep.point(point) for point in sweep.points]
    assert len(points) == 2 * 2 * 2
    directory, request = points[-1]
    assert directory.endswith("ddpm-ddim5/scale-2-t-0-500")
    assert isinstance(request, SampleRequest) and request.guidance.scale == 2.0
    assert request.guidance.guidance_interval == "0,500" and request.guidance.temperature == 2.0
    assert request.sampler.sampler == "ddpm" and request.sampler.steps == "ddim5"
    assert request.plan == sweep.plan and request.launch.precision == "bf16-mixed"
    assert request.networks.classifier == "c.ckpt" and request.tracking == TrackingOptions()


def test_one_line_reads_a_union_error():
    class Error(Exception):
        pass

    text = ('Parser key "cfg_scale":\n  Does not validate against any of the Union subtypes\n  Subtypes: [A, B]\n'
            "  Errors:\n    - Not of type GuidanceScale: guidance scale must be finite and non-negative, got '-1'\n"
            "    - Expected a <class 'NoneType'>\n  Given value type: <class 'str'>\n  Given value: -1")
    assert one_line(Error(text)) == "--cfg_scale: guidance scale must be finite and non-negative, got '-1'"


def _parameter_counts():
    for package in ("guided_diffusion", "classifiers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args
                    count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
                    count += bool(args.vararg) + bool(args.kwarg)
                    if args.args and args.args[0].arg in ("self", "cls"):
                        count -= 1
                    yield count, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"


def test_no_function_takes_more_than_twenty_parameters():
    """More than ~20 parameters is asking for an option group."""
    assert [where for count, where in _parameter_counts() if count > 20] == []
