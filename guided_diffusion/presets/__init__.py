"""The catalogue of architectures: which networks exist by name, and how they are built.

- :mod:`.registry`: the closed set of network classes a file may ask for (``kind`` -> class,
  config class), over the networks of :mod:`guided_diffusion.nets` (denoisers and classifiers);
- :mod:`.catalog`: named presets (every released OpenAI checkpoint, the paper's training runs,
  small CPU configurations), each with its diffusion and sampling settings;
- :mod:`.openai_flags`: guided-diffusion's command-line flags read into those configs.
"""
from .catalog import IMAGENET_CLASSES, PRESETS, Preset, SamplingSettings, get_preset, list_presets
from .openai_flags import config_from_openai_flags
from .registry import (
    NETWORKS,
    NetworkType,
    build_network,
    classifier_config_from_dict,
    config_from_dict,
    network_kind,
    network_spec,
)

__all__ = [
    "IMAGENET_CLASSES", "PRESETS", "Preset", "SamplingSettings", "get_preset", "list_presets",
    "config_from_openai_flags", "NETWORKS", "NetworkType", "build_network", "classifier_config_from_dict",
    "config_from_dict", "network_kind", "network_spec",
]
