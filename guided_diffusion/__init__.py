"""Classifier-guided diffusion models (ADM / improved DDPM / DDIM / score SDEs) in plain PyTorch.

The diffusion core (:mod:`guided_diffusion.diffusion`), the networks (:mod:`guided_diffusion.nets`)
and the samplers import nothing from Lightning; the Lightning layer is thin glue on top.
"""

__version__ = "0.1.0"
