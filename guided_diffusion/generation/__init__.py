"""Generation runs: ``gd sample`` (sharded, resumable, distributed) and what it is built from.

:mod:`.plan`, :mod:`.shards` and :mod:`.pairing` are plain PyTorch; :mod:`.runner` is the Lightning glue and
:mod:`.command` the command. Importing this package does not import Lightning.
"""
from ..checkpoints import LoadedNetwork, load_classifier, load_diffusion_model
from ..images import save_grid, to_uint8_nhwc
from .pairing import build_guidance, check_pair
from .plan import SamplePlan, parse_classes
from .shards import merge_shards

__all__ = ["LoadedNetwork", "build_guidance", "check_pair", "load_classifier", "load_diffusion_model",
           "SamplePlan", "merge_shards", "parse_classes", "save_grid", "to_uint8_nhwc", "sample"]


def __getattr__(name):
    if name == "sample":
        from .command import sample

        return sample
    raise AttributeError(name)
