"""``gd prepare SRC DEST --image_size N``: ADM's pre-processing applied once, into LitData chunks to stream.

    gd prepare data/imagenet/train data/imagenet64/train --image_size 64
    gd prepare data/imagenet/val data/imagenet64/val --image_size 64 --classes_from data/imagenet64/train
    gd prepare data/imagenet/train data/imagenet64-crops/train --image_size 80    # for 64 px random crops

Training then reads ``data.dataset: prepared`` with ``data.data_dir: DEST`` (or the URL it was uploaded to); see
``docs/data.md``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..data.prepare import PrepareOptions
from .command import Command


@dataclass(frozen=True)
class PrepareRequest:
    """A ``gd prepare`` run.

    Args:
        src: the image folder (ImageNet's ``train``: one sub-folder per class).
        dest: a new or empty local folder; one an interrupted run of the same command left is resumed, and a
            finished one is left as it is.
        options: the size, labels, channels, workers, policies and chunk size.
    """

    src: str
    dest: str
    options: PrepareOptions = field(default_factory=PrepareOptions)


def run_prepare(request: PrepareRequest):
    """Decode, centre-crop and resize every image of a folder once (ADM's pre-processing), into LitData chunks
    that every rank and node streams (the manifest gd_prepared.json lists the classes, counts and settings)."""
    from ..data.prepare import prepare_images

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    manifest = prepare_images(request.src, request.dest, request.options, verbose=True)
    skipped = f"; {len(manifest.skipped)} unreadable file(s) skipped" if manifest.skipped else ""
    print(f"gd prepare: {manifest.num_images} images in {manifest.num_classes} classes at {manifest.image_size} px "
          f"in {request.dest}{skipped}")
    return manifest


COMMAND = Command("prepare", "decode and resize an image folder once into LitData chunks to stream (ImageNet)",
                  PrepareRequest, run_prepare)

__all__ = ["COMMAND", "PrepareRequest", "run_prepare"]
