"""guided-diffusion's sampling-script flags for ``gd sample``: the reference README's commands, with
``python classifier_sample.py`` / ``image_sample.py`` swapped for ``gd sample``, run as they are.

    gd sample $MODEL_FLAGS --classifier_scale 1.0 --classifier_path 64x64_classifier.pt \\
        --model_path 64x64_diffusion.pt --batch_size 4 --num_samples 100 --timestep_respacing ddim25 --use_ddim True

The sampling flags map onto this project's options (one line says how); the architecture flags
(``MODEL_FLAGS``, ``CLASSIFIER_FLAGS``) are collected into ``--model_flags`` / ``--classifier_flags``,
which ``gd sample`` checks against the networks it reads from the files (the files decide; a flag that
contradicts them is an error naming the setting). ``--use_fp16`` is a precision choice here
(``--precision 16-mixed`` / ``bf16-mixed``), so it is noted and left out.
"""
from __future__ import annotations

import dataclasses
import shlex
from typing import Optional

import numpy as np

from ..checkpoints import LoadedNetwork
from ..presets.openai_flags import FLAG_NAMES, config_from_openai_flags

#: reference flag -> this project's option (same value)
RENAMED = {"classifier_path": "classifier", "classifier_scale": "scale", "timestep_respacing": "steps"}
#: reference flags with no counterpart (the precision is the user's choice)
IGNORED = {"use_fp16", "classifier_use_fp16", "use_checkpoint"}
MODEL_FLAGS = (FLAG_NAMES["model"] | FLAG_NAMES["diffusion"]) - IGNORED - {"timestep_respacing"}
CLASSIFIER_FLAGS = FLAG_NAMES["classifier"] - IGNORED - {"image_size"}
#: what the flags cannot say or what does not change the function (training-only settings)
UNCHECKED = ("dropout", "use_checkpoint", "null_class", "out_channels")


def uses_reference_flags(args: list[str]) -> bool:
    """True when ``gd sample``'s arguments name the reference script's model (``--model_path``)."""
    return any(arg == "--model_path" or arg.startswith("--model_path=") for arg in args)


def _pairs(args: list[str]) -> list[tuple[str, Optional[str]]]:
    """``--name value`` / ``--name=value`` pairs and positional words (name None)."""
    pairs, index = [], 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("--") and "=" in arg:
            name, value = arg[2:].split("=", 1)
            pairs.append((name, value))
        elif arg.startswith("--"):
            if index + 1 >= len(args):
                raise ValueError(f"flag {arg} has no value")
            pairs.append((arg[2:], args[index + 1]))
            index += 1
        else:
            pairs.append((None, arg))
        index += 1
    return pairs


def _true(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no", "t", "f", "y", "n"):
        raise ValueError(f"--{name} expects True or False, got {value!r}")
    return value.lower() in ("true", "1", "yes", "t", "y")


def translate(args: list[str]) -> tuple[list[str], str]:
    """``gd sample`` arguments for the reference script's ``args``, and the one-line note of the mapping."""
    pairs = _pairs(args)
    values = {name: value for name, value in pairs if name is not None}
    if "model_path" not in values:
        raise ValueError("the guided-diffusion flags need --model_path")
    out = [values["model_path"]] + [value for name, value in pairs if name is None]
    mapped, model_flags, classifier_flags, ignored = ["--model_path -> CHECKPOINT"], [], [], []
    for name, value in pairs:
        if name is None or name == "model_path":
            continue
        if name in RENAMED:
            out += [f"--{RENAMED[name]}", value]
            mapped.append(f"--{name} -> --{RENAMED[name]}")
        elif name == "use_ddim":
            pass  # below: it decides the sampler
        elif name in IGNORED:
            ignored.append(f"--{name}")
        elif name in CLASSIFIER_FLAGS:
            classifier_flags += [f"--{name}", value]
        elif name in MODEL_FLAGS:
            model_flags += [f"--{name}", value]
        else:
            out += [f"--{name}", value]  # the project's own options (and the shared ones)
    if "sampler" not in values:
        ddim = _true("use_ddim", values["use_ddim"]) if "use_ddim" in values else False
        out += ["--sampler", "ddim" if ddim else "ddpm"]
        mapped.append(f"--use_ddim {ddim} -> --sampler {'ddim' if ddim else 'ddpm'}")
    if "timestep_respacing" not in values and "steps" not in values:
        steps = values.get("diffusion_steps", "1000")  # the reference samples every step by default
        out += ["--steps", steps]
        mapped.append(f"no --timestep_respacing -> --steps {steps} (every step, as the reference)")
    if "classes" not in values:
        out += ["--classes", "random"]  # the reference draws labels uniformly
        mapped.append("labels -> --classes random")
    if model_flags:
        out.append(f"--model_flags={shlex.join(model_flags)}")  # one token: its value starts with --
        mapped.append("MODEL_FLAGS -> --model_flags (checked against the model file)")
    if classifier_flags:
        # the classifier's image size is the model's (the reference shares one --image_size)
        if "image_size" in values:
            classifier_flags += ["--image_size", values["image_size"]]
        out.append(f"--classifier_flags={shlex.join(classifier_flags)}")
        mapped.append("CLASSIFIER_FLAGS -> --classifier_flags (checked against the classifier file)")
    note = "guided-diffusion flags: " + ", ".join(mapped)
    if ignored:
        note += f"; {' '.join(ignored)} ignored (precision is --precision)"
    return out, note


def parse_flags(flags: Optional[str], kind: str) -> None:
    """A ``--model_flags`` / ``--classifier_flags`` string must read as the reference's flags (checked early)."""
    if flags:
        config_from_openai_flags(flags, kind)


def check_flags(flags: Optional[str], loaded: LoadedNetwork, kind: str, what: str) -> None:
    """The architecture the reference flags describe must be the network read from the file."""
    if not flags:
        return
    _, config, diffusion = config_from_openai_flags(flags, kind, num_classes=loaded.num_classes or 1000)

    def value(of, name):
        return of.resolved_channel_mult if name == "channel_mult" else getattr(of, name, None)

    differing = [f"{field.name} {value(config, field.name)!r} (the file: {value(loaded.config, field.name)!r})"
                 for field in dataclasses.fields(config) if field.name not in UNCHECKED
                 and value(config, field.name) != value(loaded.config, field.name)]
    if kind == "unet":
        built = diffusion.build()
        if built.num_timesteps != loaded.diffusion.num_timesteps or not np.allclose(
                built.alphas_cumprod, loaded.diffusion.alphas_cumprod, rtol=1e-6):
            differing.append(f"diffusion_steps / noise_schedule ({diffusion.steps}, {diffusion.noise_schedule!r}) "
                             f"do not give the file's noise process ({loaded.diffusion.num_timesteps} steps)")
    if differing:
        raise ValueError(f"the {what} flags do not describe {loaded.source}: " + "; ".join(differing))
