"""Generation runs: ``gd sample`` (sharded, resumable, distributed) and what it is built from.

:mod:`.plan` and :mod:`.models` are plain PyTorch; :mod:`.runner` is the Lightning glue and
:mod:`.command` the command. Importing this package does not import Lightning.
"""
from .models import LoadedNetwork, build_guidance, check_pair, load_classifier, load_diffusion_model
from .plan import SamplePlan, merge_shards, parse_classes, save_grid, to_uint8_nhwc

__all__ = ["LoadedNetwork", "build_guidance", "check_pair", "load_classifier", "load_diffusion_model",
           "SamplePlan", "merge_shards", "parse_classes", "save_grid", "to_uint8_nhwc", "sample"]


def __getattr__(name):
    if name == "sample":
        from .command import sample

        return sample
    raise AttributeError(name)
