"""``gd prepare SRC DEST --image_size N``: ADM's pre-processing applied once, into LitData chunks to stream.

    gd prepare data/imagenet/train data/imagenet64/train --image_size 64
    gd prepare data/imagenet/val data/imagenet64/val --image_size 64 --classes_from data/imagenet64/train
    gd prepare data/imagenet/train data/imagenet64-crops/train --image_size 80    # for 64 px random crops

Training then reads ``data.dataset: prepared`` with ``data.data_dir: DEST`` (or the URL it was uploaded to); see
``docs/data.md``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Optional

from ..data.datasets import BadImagePolicy, LabelSource
from .command import Command


@dataclass(frozen=True)
class PrepareRequest:
    """A ``gd prepare`` run.

    Args:
        src: the image folder (ImageNet's ``train``: one sub-folder per class).
        dest: a new or empty local folder; one an interrupted run of the same command left is resumed, and a
            finished one is left as it is.
        image_size: side of the stored square images: the network's (ADM's centre crop), or larger for random
            crops at load (``ceil(size / 0.8)``: 80 for 64 px).
        labels_from: a file's class: its sub-folder (``directory``), its file-name prefix before ``_``
            (``filename``, guided-diffusion's rule) or ``none`` (all class 0).
        channels: 3 (RGB) or 1 (grey-scale); every image is converted (grey-scale, CMYK, palette, alpha).
        num_workers: processes decoding in parallel (default: one per CPU).
        on_bad_image: ``skip`` unreadable files (warned about, counted and listed in the manifest) or ``raise``
            (stop naming the file; a re-run resumes).
        classes_from: a prepared folder whose classes (names and indices) this set takes, e.g. the training set
            when preparing the validation set.
        chunk_bytes: size of a LitData chunk file (``64MB``; default: 64 MB, or 1/64 of a smaller set, at least
            1 MB, so that every loader worker streams several chunks).
    """

    src: str
    dest: str
    image_size: Optional[int] = None
    labels_from: LabelSource = "directory"
    channels: Literal[1, 3] = 3
    num_workers: Optional[int] = None
    on_bad_image: BadImagePolicy = "skip"
    classes_from: Optional[str] = None
    chunk_bytes: Optional[str] = None


def run_prepare(request: PrepareRequest):
    """Decode, centre-crop and resize every image of a folder once (ADM's pre-processing), into LitData chunks
    that every rank and node streams (the manifest gd_prepared.json lists the classes, counts and settings)."""
    from ..data.prepare import prepare_images

    if request.image_size is None:
        raise ValueError("give --image_size N (the side of the stored images: the network's, or larger for random "
                         "crops)")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    manifest = prepare_images(request.src, request.dest, request.image_size, labels_from=request.labels_from,
                              channels=request.channels, num_workers=request.num_workers,
                              on_bad_image=request.on_bad_image, classes_from=request.classes_from,
                              chunk_bytes=request.chunk_bytes, verbose=True)
    skipped = f"; {len(manifest.skipped)} unreadable file(s) skipped" if manifest.skipped else ""
    print(f"gd prepare: {manifest.num_images} images in {manifest.num_classes} classes at {manifest.image_size} px "
          f"in {request.dest}{skipped}")
    return manifest


COMMAND = Command("prepare", "decode and resize an image folder once into LitData chunks to stream (ImageNet)",
                  PrepareRequest, run_prepare)

__all__ = ["COMMAND", "PrepareRequest", "run_prepare"]
