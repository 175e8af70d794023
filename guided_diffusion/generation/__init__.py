"""Sampling runs: what ``gd sample`` / ``gd upsample`` are asked (:mod:`.request`), the plan of sample indices
(:mod:`.plan`), the files of a run (:mod:`.shards`), the networks checked against each other (:mod:`.pairing`) and
the distributed loop on Lightning Fabric (:mod:`.runner`). The commands themselves are
:mod:`guided_diffusion.commands`.
"""
from ..checkpoints import LoadedNetwork, load_classifier, load_diffusion_model
from ..images import save_grid, to_uint8_nhwc
from .pairing import check_pair
from .plan import SamplePlan, parse_classes
from .shards import merge_shards

__all__ = ["LoadedNetwork", "check_pair", "load_classifier", "load_diffusion_model", "SamplePlan", "merge_shards",
           "parse_classes", "save_grid", "to_uint8_nhwc"]
