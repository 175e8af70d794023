"""Training data: labelled image folders, the embedded MNIST-5k and synthetic images.

:mod:`.datasets` is plain PyTorch + PIL; :class:`ImageDataModule` (imported lazily) is the
Lightning data module built on it.
"""
from .datasets import (
    ArrayImageDataset,
    ImageFolderDataset,
    ImageTransform,
    UnreadableImageError,
    center_crop_arr,
    list_image_files,
    load_mnist5k,
    random_crop_arr,
    synthetic_images,
)

__all__ = [
    "ArrayImageDataset", "ImageFolderDataset", "ImageTransform", "UnreadableImageError", "center_crop_arr",
    "list_image_files", "load_mnist5k", "random_crop_arr", "synthetic_images", "ImageDataModule",
]


def __getattr__(name):
    if name == "ImageDataModule":
        from .datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
