"""Every network file the project reads or writes, in one place, without Lightning.

- :mod:`.loading`: ``load_diffusion_model`` / ``load_classifier`` / ``load_upsampler`` read any accepted
  file, recognised by its content: this project's Lightning ``.ckpt``, an exported network file, an OpenAI ``.pt``;
- :mod:`.lightning`: this project's Lightning checkpoints (``load_diffusion_checkpoint``,
  ``load_classifier_checkpoint``, ``load_ncsn_checkpoint``; ``export`` = ``gd export``);
- :mod:`.openai`: guided-diffusion's ``.pt`` layout, import into the matching preset and export;
- :mod:`.network_file`: architecture + weights in one file (``save_network`` / ``load_network``);
- :mod:`.timm_file`: a plain timm classifier from a local weights file (``load_timm_classifier``);
- :mod:`.matching`: strict loading with one mismatch report (missing / unexpected / mis-shaped keys,
  the preset that would fit).

Files are read with ``weights_only=True`` (:mod:`guided_diffusion.torch_files`); only the network
classes of :data:`guided_diffusion.presets.NETWORKS` are ever built from a file; writes are atomic.
"""
from .lightning import (
    export,
    load_classifier_checkpoint,
    load_diffusion_checkpoint,
    load_ncsn_checkpoint,
    read_training_checkpoint,
)
from .loading import FileKind, LoadedNetwork, load_classifier, load_diffusion_model, load_upsampler, read_network_file
from .matching import CheckpointMismatchError, find_matching_presets, preset_shapes
from .network_file import NETWORK_FORMAT, load_network, read_network_metadata, save_network
from .openai import export_openai_checkpoint, load_openai_checkpoint, load_state_dict_file
from .timm_file import load_timm_classifier

__all__ = [
    "export", "load_classifier_checkpoint", "load_diffusion_checkpoint", "load_ncsn_checkpoint",
    "read_training_checkpoint", "FileKind", "LoadedNetwork", "load_classifier", "load_diffusion_model",
    "load_upsampler", "read_network_file", "CheckpointMismatchError", "find_matching_presets", "preset_shapes",
    "NETWORK_FORMAT", "load_network", "read_network_metadata", "save_network", "export_openai_checkpoint",
    "load_openai_checkpoint", "load_state_dict_file", "load_timm_classifier",
]
