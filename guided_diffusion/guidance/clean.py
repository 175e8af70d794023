"""Off-the-shelf classifier guidance: an ordinary classifier of *clean* images guides through the predicted x_0.

Ma et al. 2023 ("Elucidating the design space of classifier-guided diffusion generation") guide a diffusion model
with a classifier p(y | x) that never saw a noisy image. At a step at x_t the model predicts the clean sample
x_0_hat = x_0_hat(x_t, t); the classifier is asked about x_0_hat, and the gradient of its calibrated log-likelihood
*with respect to x_0_hat* is used where ADM uses grad_{x_t} log p_phi(y | x_t) (no Jacobian d x_0_hat / d x_t, so
the diffusion model is evaluated once, under ``no_grad``):

    g = grad_{x_0} log p_cal(y | x_0) |_{x_0 = x_0_hat}

and applied exactly as ADM's classifier guidance (:class:`~.kinds.ClassifierGuidance` with ``gradient_at="x0"``):

- ancestral steps (``ddpm``): mu <- mu + s Sigma g;
- DDIM, DPM-Solver++ (eps form): eps <- eps - sqrt(1 - abar_t) s g, and x_0, mu recomputed from the new eps;
- the SDE samplers on a DDPM model (``euler-maruyama``, ``pc``, ...): score <- score + s g, where x_0_hat is
  Tweedie's estimate from the score, x_0 = (x_t + sigma_t^2 score) / alpha_t
  (:class:`~guided_diffusion.sde.models.GuidedScore` hands it to ``score_shift``).

So every discrete sampler and every SDE sampler of the registry takes it. With ``clip_denoised`` the discrete
samplers show the classifier the clipped x_0_hat (a clean classifier has only seen images in [-1, 1]).

Calibration (the pre-conditioning of Ma et al.), both optional:

1. Logit temperatures. With logits f(x) = (f_1, ..., f_K) and two temperatures, the *joint* temperature tau
   (``temperature``) and the *marginal* one tau_m (``margin_temperature``, the normaliser's):

       log p_cal(y | x) = f_y(x) / tau - log sum_j exp(f_j(x) / tau_m)

   (tau_m = tau is the tempered softmax log softmax(f / tau)_y; the paper sets tau_m below tau, as a discount
   of the joint temperature).
2. Smoothed activations: every ReLU(z) = max(z, 0) of the classifier replaced by

       Softplus_beta(z) = (1 / beta) log(1 + exp(beta z))

   (beta -> inf recovers ReLU, |Softplus_beta - ReLU| <= log 2 / beta); its input gradient is smooth, and far less
   noisy than the piecewise-constant one of a ReLU network.

:class:`CleanClassifier` adapts a clean classifier to the ``classifier(x, t) -> logits`` call of the guidance;
:func:`off_the_shelf_guidance` builds the guidance. Plain PyTorch; nothing here imports Lightning.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Optional

import torch
from torch import nn

from .kinds import ClassifierGuidance

__all__ = ["CleanClassifier", "smooth_relu", "off_the_shelf_guidance"]


def _check_beta(beta: Any) -> float:
    try:
        valid = not isinstance(beta, bool) and math.isfinite(float(beta)) and float(beta) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"softplus_beta must be finite and > 0 (or None: keep the ReLUs), got {beta!r}")
    return float(beta)


def smooth_relu(network: nn.Module, beta: float) -> tuple[nn.Module, int]:
    """A deep copy of ``network`` with every ``nn.ReLU`` module replaced by ``nn.Softplus(beta)``.

    Args:
        network: any module (``network`` itself is never changed).
        beta: the Softplus sharpness beta > 0 (large: close to ReLU).

    Returns:
        ``(copy, replaced)``: the smoothed copy and how many ReLU modules were replaced (a ReLU module used at
        several places stays one Softplus module). ReLUs called as functions inside ``forward``
        (``F.relu``, ``torch.relu``) are not modules and stay ReLUs.
    """
    beta = _check_beta(beta)
    smoothed = copy.deepcopy(network)
    if isinstance(smoothed, nn.ReLU):
        return nn.Softplus(beta), 1
    # every place a ReLU sits (a module registered twice is listed at both places), found before any change
    places = [(name, module) for name, module in smoothed.named_modules(remove_duplicate=False)
              if isinstance(module, nn.ReLU)]
    replacements: dict[int, nn.Softplus] = {}
    for name, relu in places:
        parent_name, _, attribute = name.rpartition(".")
        setattr(smoothed.get_submodule(parent_name), attribute, replacements.setdefault(id(relu), nn.Softplus(beta)))
    return smoothed, len(replacements)


def _takes_time_by_default(network: Callable) -> bool:
    """The project's classifiers (encoder-UNet, timm trunk with a timestep embedding) take ``(x, t)``."""
    from ..nets.encoder import EncoderUNet
    from ..nets.timm_classifier import TimmNoisyClassifier

    return isinstance(network, (EncoderUNet, TimmNoisyClassifier))


class CleanClassifier(nn.Module):
    """A classifier of clean images as ``classifier(x, t) -> logits`` (the call the guidance makes); t is ignored.

    Args:
        network: the classifier: ``network(x) -> logits (B, K)`` (a timm or torchvision model), or, with
            ``takes_time``, ``network(x, t)`` called at t = 0 (this project's ``EncoderUNet`` /
            ``TimmNoisyClassifier`` trained with ``noised: false``). Any callable; an ``nn.Module`` for
            ``softplus_beta``.
        softplus_beta: replace every ``nn.ReLU`` of the classifier by ``nn.Softplus(beta)`` (Ma et al.'s smoothed
            activations; large beta: close to ReLU) in a deep copy, leaving ``network`` unchanged. ``None``: the
            classifier as it is. A classifier without ``nn.ReLU`` modules (this project's SiLU networks) is refused:
            there is nothing to smooth.
        takes_time: call ``network(x, t=0)`` (``True``) or ``network(x)`` (``False``); ``None``: ``True`` exactly
            for this project's classifier networks.
        preprocess: a differentiable map from the diffusion model's images (x_0 in [-1, 1]) to the classifier's
            input, applied before the network, e.g. ``lambda x: ((x + 1) / 2 - mean) / std`` for a classifier
            trained on ImageNet-normalised images, or a resize to its resolution. ``None``: the images as they are
            (a classifier trained in this project sees [-1, 1], as the diffusion model does).

    Attributes:
        network: what is called (the smoothed copy with ``softplus_beta``).
        replaced: how many ReLU modules were replaced (0 without ``softplus_beta``).
    """

    def __init__(self, network: Callable, *, softplus_beta: Optional[float] = None,
                 takes_time: Optional[bool] = None, preprocess: Optional[Callable] = None):
        super().__init__()
        if not callable(network):
            raise TypeError(f"the classifier must be callable (a network x -> logits), got {type(network).__name__}")
        if takes_time is None:
            takes_time = _takes_time_by_default(network)
        elif not isinstance(takes_time, bool):
            raise ValueError(f"takes_time must be True, False or None, got {takes_time!r}")
        self.takes_time = takes_time
        self.softplus_beta: Optional[float] = None
        self.replaced = 0
        if softplus_beta is not None:
            beta = _check_beta(softplus_beta)
            if not isinstance(network, nn.Module):
                raise ValueError("softplus_beta replaces the ReLU modules of a network: the classifier must be an "
                                 f"nn.Module, got {type(network).__name__}")
            network, self.replaced = smooth_relu(network, beta)
            if self.replaced == 0:
                raise ValueError(f"softplus_beta smooths ReLU activations; this classifier "
                                 f"({type(network).__name__}) has none (no nn.ReLU module)")
            self.softplus_beta = beta
        self.network = network
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess must be callable (images -> classifier inputs), "
                            f"got {type(preprocess).__name__}")
        self.preprocess = preprocess

    @property
    def num_classes(self) -> Optional[int]:
        """The classifier's number of classes, when it says (``num_classes`` of the network or of its config)."""
        found = getattr(self.network, "num_classes", None)
        if found is None:
            found = getattr(getattr(self.network, "config", None), "num_classes", None)
        return found

    def forward(self, x: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``(B, K)`` of the clean images ``x``; ``t`` (the step's timestep) is not used.

        Args:
            x: images ``(B, C, H, W)`` as the diffusion model makes them (``preprocess`` maps them first).
            t: ignored (a network that takes a timestep is called at t = 0).
        """
        if self.preprocess is not None:
            x = self.preprocess(x)
        if self.takes_time:
            return self.network(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        return self.network(x)

    def extra_repr(self) -> str:
        smoothing = f", replaced={self.replaced}" if self.softplus_beta else ""
        return f"takes_time={self.takes_time}, softplus_beta={self.softplus_beta}{smoothing}"


def off_the_shelf_guidance(classifier: Callable, scale: float = 1.0, *, temperature: float = 1.0,
                           margin_temperature: Optional[float] = None, softplus_beta: Optional[float] = None,
                           takes_time: Optional[bool] = None, preprocess: Optional[Callable] = None,
                           **classifier_guidance_options: Any) -> ClassifierGuidance:
    """Classifier guidance by a classifier of clean images, through the predicted x_0 (Ma et al. 2023).

    The guidance gradient is g = grad_{x_0} [f_y(x_0) / tau - log sum_j exp(f_j(x_0) / tau_m)] at x_0 = x_0_hat
    (module doc), applied as mu + s Sigma g (ancestral steps), eps - sqrt(1 - abar_t) s g (DDIM, DPM-Solver++) or
    score + s g (the SDE samplers): every sampler of :func:`guided_diffusion.sampling.sample`. Scale 0 is exactly
    unguided (the classifier is not called).

    Args:
        classifier: the classifier of clean images (``network(x) -> logits``, or a project classifier trained with
            ``noised: false``), or a :class:`CleanClassifier` already made (then ``softplus_beta``, ``takes_time``
            and ``preprocess`` belong to it, not here).
        scale: the guidance scale s (finite, >= 0).
        temperature: the joint logit temperature tau > 0 (1: the classifier as trained).
        margin_temperature: the marginal temperature tau_m > 0 of the normaliser (``None``: tau_m = tau).
        softplus_beta: replace the classifier's ReLUs by Softplus(beta) (:class:`CleanClassifier`; ``None``: keep).
        takes_time: how the network is called (:class:`CleanClassifier`; ``None``: detected).
        preprocess: images -> classifier inputs, e.g. the classifier's normalisation (:class:`CleanClassifier`).
        classifier_guidance_options: the other options of :class:`~.kinds.ClassifierGuidance` (``schedule``,
            ``interval``, ``interval_in``, ``every``). ``gradient_at`` can only be ``"x0"``: x_t is a noisy image,
            which a clean classifier cannot judge.

    Returns:
        a :class:`~.kinds.ClassifierGuidance` with ``gradient_at="x0"`` whose ``classifier`` is the
        :class:`CleanClassifier`.
    """
    gradient_at = classifier_guidance_options.pop("gradient_at", "x0")
    if gradient_at != "x0":
        raise ValueError(f"off-the-shelf guidance asks a classifier of clean images about the predicted x_0: "
                         f"gradient_at must be 'x0', got {gradient_at!r}")
    if isinstance(classifier, CleanClassifier):
        if softplus_beta is not None or takes_time is not None or preprocess is not None:
            raise ValueError("the classifier is already a CleanClassifier: give softplus_beta, takes_time and "
                             "preprocess to it, not to off_the_shelf_guidance")
        clean = classifier
    else:
        clean = CleanClassifier(classifier, softplus_beta=softplus_beta, takes_time=takes_time, preprocess=preprocess)
    return ClassifierGuidance(clean, scale, temperature=temperature, margin_temperature=margin_temperature,
                              gradient_at="x0", **classifier_guidance_options)
